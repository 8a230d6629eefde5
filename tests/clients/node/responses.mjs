// The Responses API from JavaScript: node responses.mjs CASE BASE_URL KEY MODEL
// CASE: vercel-generate, vercel-stream, vercel-generate-tools, vercel-stream-tools,
// vercel-generate-tools-2steps (the Vercel AI SDK's default `openai(model)` provider, which
// speaks the Responses API), openai-create, openai-stream, openai-create-tools,
// openai-stream-tools (the openai package's client.responses.create and .stream).
// Errors are printed, not thrown. Each request's JSON body is summed up in `requests`.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";
import OpenAI from "openai";

import {
  WEATHER_PARAMETERS,
  apiKey,
  baseURL,
  caseName,
  describeError,
  model,
  print,
  recordingFetch,
  sent,
} from "./common.mjs";

// What a Responses request carries that the gateway must understand: recorded beside what
// recordingFetch records (method, url, accept, stream).
async function bodyRecordingFetch(input, init = {}) {
  const promise = recordingFetch(input, init);
  let body = null;
  try {
    body = typeof init.body === "string" ? JSON.parse(init.body) : null;
  } catch {
    body = null;
  }
  if (body) {
    const input = typeof body.input === "string" ? [body.input] : (body.input ?? []);
    Object.assign(sent[sent.length - 1], {
      store: "store" in body ? body.store : "absent",
      previousResponseId: body.previous_response_id ?? null,
      include: body.include ?? null,
      inputTypes: input.map((item) =>
        typeof item === "string" ? "string" : (item.type ?? `role:${item.role}`),
      ),
      toolTypes: (body.tools ?? []).map((t) => t.type),
    });
  }
  return promise;
}

const withTools = caseName.includes("-tools");
const prompt = withTools ? "Weather in Paris and London?" : "Hello!";

// -- the Vercel AI SDK -----------------------------------------------------------------------

function vercelSettings() {
  const provider = createOpenAI({ baseURL, apiKey, fetch: bodyRecordingFetch });
  const tools = withTools
    ? {
        get_weather: tool({
          description: "Current weather in a city.",
          inputSchema: jsonSchema(WEATHER_PARAMETERS),
          execute: async ({ city }) => ({ city, celsius: 21 }),
        }),
      }
    : undefined;
  // Default settings, as a user has them: openai(model) is the Responses API.
  const settings = { model: provider(model), prompt, tools };
  if (caseName.endsWith("-2steps")) settings.stopWhen = stepCountIs(2);
  return settings;
}

function vercelSummary(result) {
  return {
    text: result.text,
    finishReason: result.finishReason,
    toolCalls: (result.toolCalls ?? []).map((c) => ({ name: c.toolName, input: c.input })),
    toolResults: (result.toolResults ?? []).map((r) => r.output),
    usage: result.usage ?? null,
    modelId: result.response?.modelId ?? null,
    responseId: result.response?.id ?? null,
    steps: result.steps?.length ?? null,
  };
}

async function vercelGenerate() {
  return vercelSummary(await generateText(vercelSettings()));
}

async function vercelStream() {
  const errors = [];
  const parts = [];
  let received = "";
  const result = streamText({ ...vercelSettings(), onError: ({ error }) => errors.push(error) });
  for await (const part of result.fullStream) {
    parts.push(part.type);
    if (part.type === "error") errors.push(part.error);
    if (part.type === "text-delta") received += part.text;
  }
  if (errors.length) return { parts, received, error: describeError(errors[0]) };
  return {
    parts,
    ...vercelSummary({
      text: await result.text,
      finishReason: await result.finishReason,
      toolCalls: await result.toolCalls,
      toolResults: await result.toolResults,
      usage: await result.usage,
      response: await result.response,
      steps: await result.steps,
    }),
  };
}

// -- the openai package ----------------------------------------------------------------------

const client = new OpenAI({ apiKey, baseURL, timeout: 20_000, fetch: bodyRecordingFetch });
const openaiTools = withTools
  ? [
      {
        type: "function",
        name: "get_weather",
        description: "Current weather in a city.",
        parameters: WEATHER_PARAMETERS,
        strict: false,
      },
    ]
  : undefined;

function responseSummary(response) {
  return {
    id: response.id,
    object: response.object,
    model: response.model,
    status: response.status,
    // output_text is a convenience of create(); stream().finalResponse() has only the items.
    text: response.output
      .filter((item) => item.type === "message")
      .flatMap((item) => item.content)
      .map((part) => part.text ?? "")
      .join(""),
    outputText: response.output_text ?? null,
    reasoning: response.output
      .filter((item) => item.type === "reasoning")
      .flatMap((item) => item.content ?? [])
      .map((part) => part.text)
      .join(""),
    outputTypes: response.output.map((item) => item.type),
    functionCalls: response.output
      .filter((item) => item.type === "function_call")
      .map((c) => ({ id: c.id, callId: c.call_id, name: c.name, arguments: c.arguments })),
    usage: response.usage ?? null,
  };
}

async function openaiCreate() {
  return responseSummary(
    await client.responses.create({ model, input: prompt, tools: openaiTools }),
  );
}

async function openaiStream(result) {
  const stream = client.responses.stream({ model, input: prompt, tools: openaiTools });
  Object.assign(result, { events: [], received: "", argumentDeltas: "" });
  for await (const event of stream) {
    result.events.push(event.type);
    if (event.type === "response.output_text.delta") result.received += event.delta;
    if (event.type === "response.function_call_arguments.delta")
      result.argumentDeltas += event.delta;
  }
  return Object.assign(result, responseSummary(await stream.finalResponse()));
}

let result = {};
try {
  if (caseName.startsWith("vercel-generate")) result = await vercelGenerate();
  else if (caseName.startsWith("vercel-stream")) result = await vercelStream();
  else if (caseName.startsWith("openai-create")) result = await openaiCreate();
  else if (caseName.startsWith("openai-stream")) await openaiStream(result);
  else throw new Error(`unknown case ${caseName}`);
} catch (error) {
  result.error = describeError(error);
}
print(result);
