// The Vercel AI SDK (ai + @ai-sdk/openai-compatible, chat completions):
// node vercel.mjs CASE BASE_URL KEY MODEL
// CASE: generate, stream, generate-tools, stream-tools, generate-should-retry. Errors are
// printed, not thrown.
import {
  OpenAICompatibleChatLanguageModel,
  createOpenAICompatible,
} from "@ai-sdk/openai-compatible";
import { generateText, jsonSchema, streamText, tool } from "ai";
import { z } from "zod";

import {
  WEATHER_PARAMETERS,
  apiKey,
  baseURL,
  caseName,
  describeError,
  model,
  print,
  recordingFetch,
} from "./common.mjs";

// The SDK retries every 429 (APICallError.isRetryable: 408, 409, 429, 5xx), whatever
// `x-should-retry` says. A chat model built with an `errorStructure` (which
// createOpenAICompatible does not pass on) makes it listen.
const shouldRetry = {
  errorSchema: z.object({
    error: z.object({
      message: z.string(),
      type: z.string().nullish(),
      param: z.any().nullish(),
      code: z.union([z.string(), z.number()]).nullish(),
    }),
  }),
  errorToMessage: (data) => data.error.message,
  isRetryable: (response) =>
    response.headers.get("x-should-retry") !== "false" &&
    [408, 409, 429].concat(response.status >= 500 ? [response.status] : []).includes(response.status),
};
const provider = createOpenAICompatible({
  name: "woozlit",
  baseURL,
  apiKey,
  includeUsage: true,
  fetch: recordingFetch,
});
const chatModel = caseName.endsWith("-should-retry")
  ? new OpenAICompatibleChatLanguageModel(model, {
      provider: "woozlit.chat",
      url: ({ path }) => `${baseURL}${path}`,
      headers: () => ({ Authorization: `Bearer ${apiKey}` }),
      fetch: recordingFetch,
      includeUsage: true,
      errorStructure: shouldRetry,
    })
  : provider.chatModel(model);
const tools = caseName.endsWith("-tools")
  ? {
      get_weather: tool({
        description: "Current weather in a city.",
        inputSchema: jsonSchema(WEATHER_PARAMETERS),
        execute: async ({ city }) => ({ city, celsius: 21 }),
      }),
    }
  : undefined;
// Default settings (maxRetries: 2), as a user has them.
const settings = { model: chatModel, prompt: "Hello!", tools };

function summary(result) {
  return {
    text: result.text,
    reasoning: result.reasoningText ?? null,
    finishReason: result.finishReason,
    toolCalls: (result.toolCalls ?? []).map((c) => ({ name: c.toolName, input: c.input })),
    toolResults: (result.toolResults ?? []).map((r) => r.output),
    usage: result.usage ?? null,
    modelId: result.response?.modelId ?? null,
  };
}

async function generate() {
  return summary(await generateText(settings));
}

async function stream() {
  const errors = [];
  const parts = [];
  let received = "";
  const result = streamText({ ...settings, onError: ({ error }) => errors.push(error) });
  for await (const part of result.fullStream) {
    parts.push(part.type);
    if (part.type === "error") errors.push(part.error);
    if (part.type === "text-delta") received += part.text;
  }
  const out = { parts };
  if (errors.length) {
    out.error = describeError(errors[0]);
    out.errors = errors.map(describeError);
    out.received = received;
    return out;
  }
  return {
    ...out,
    ...summary({
      text: await result.text,
      reasoningText: await result.reasoningText,
      finishReason: await result.finishReason,
      toolCalls: await result.toolCalls,
      toolResults: await result.toolResults,
      usage: await result.usage,
      response: await result.response,
    }),
  };
}

let result = {};
try {
  if (caseName.startsWith("generate")) result = await generate();
  else if (caseName.startsWith("stream")) result = await stream();
  else throw new Error(`unknown case ${caseName}`);
} catch (error) {
  result.error = describeError(error);
}
print(result);
