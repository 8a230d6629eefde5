// The official openai package: node openai.mjs CASE BASE_URL KEY MODEL
// CASE: create, stream, create-tools, stream-tools, retrieve. Errors are printed, not thrown.
import OpenAI from "openai";

import {
  WEATHER_PARAMETERS,
  apiKey,
  baseURL,
  caseName,
  describeError,
  model,
  nullKeys,
  print,
  recordingFetch,
} from "./common.mjs";

// Default retries (2): the quota 429 must be left alone because the gateway says so.
const client = new OpenAI({ apiKey, baseURL, timeout: 20_000, fetch: recordingFetch });
const tools = caseName.endsWith("-tools")
  ? [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Current weather in a city.",
          parameters: WEATHER_PARAMETERS,
        },
      },
    ]
  : undefined;
const messages = [{ role: "user", content: "Hello!" }];

async function create() {
  const completion = await client.chat.completions.create({ model, messages, tools });
  const choice = completion.choices[0];
  return {
    id: completion.id,
    model: completion.model,
    created: completion.created,
    content: choice.message.content,
    reasoning: choice.message.reasoning_content ?? null,
    toolCalls: (choice.message.tool_calls ?? []).map((c) => ({
      id: c.id,
      name: c.function.name,
      arguments: c.function.arguments,
    })),
    finishReason: choice.finish_reason,
    usage: completion.usage ?? null,
  };
}

async function stream(result) {
  const chunks = await client.chat.completions.create({
    model,
    messages,
    tools,
    stream: true,
    stream_options: { include_usage: true },
  });
  Object.assign(result, { content: "", reasoning: "", calls: {}, nulls: [], chunks: 0 });
  for await (const chunk of chunks) {
    result.chunks += 1;
    result.id = chunk.id;
    result.model = chunk.model;
    if (chunk.usage) result.usage = chunk.usage;
    for (const choice of chunk.choices) {
      const delta = choice.delta;
      result.nulls.push(...nullKeys(delta));
      result.content += delta.content ?? "";
      result.reasoning += delta.reasoning_content ?? "";
      for (const call of delta.tool_calls ?? []) {
        const into = (result.calls[call.index] ??= { id: "", name: "", arguments: "" });
        into.id += call.id ?? "";
        into.name += call.function?.name ?? "";
        into.arguments += call.function?.arguments ?? "";
      }
      if (choice.finish_reason) result.finishReason = choice.finish_reason;
    }
  }
  result.toolCalls = Object.keys(result.calls)
    .sort((a, b) => a - b)
    .map((k) => result.calls[k]);
  delete result.calls;
  return result;
}

async function retrieve() {
  const found = await client.models.retrieve(model);
  return { id: found.id, object: found.object, ownedBy: found.owned_by };
}

const result = {};
try {
  if (caseName === "retrieve") Object.assign(result, await retrieve());
  else if (caseName.startsWith("stream")) await stream(result);
  else if (caseName.startsWith("create")) Object.assign(result, await create());
  else throw new Error(`unknown case ${caseName}`);
} catch (error) {
  result.error = describeError(error);
}
print(result);
