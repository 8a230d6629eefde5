// What both scripts share: their arguments, a fetch that records what the client sends, and
// the one JSON line they print for tests/test_clients_node.py to check.

export const [caseName, baseURL, apiKey, model] = process.argv.slice(2);

export const WEATHER_PARAMETERS = {
  type: "object",
  properties: { city: { type: "string" }, unit: { type: "string" } },
  required: ["city"],
};

// Every HTTP request the client makes: how many (retries show), and what the first carried.
export const sent = [];
export async function recordingFetch(input, init = {}) {
  const headers = new Headers(init.headers);
  let body = null;
  try {
    body = typeof init.body === "string" ? JSON.parse(init.body) : null;
  } catch {
    body = null;
  }
  sent.push({
    method: init.method ?? "GET",
    url: String(input instanceof Request ? input.url : input),
    accept: headers.get("accept"),
    contentType: headers.get("content-type"),
    stream: body && "stream" in body ? body.stream : "absent",
  });
  return fetch(input, init);
}

// The keys of an object (a delta) whose value is null, at any depth.
export function nullKeys(value, where = "delta") {
  if (value === null || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([key, item]) =>
    item === null ? [`${where}.${key}`] : nullKeys(item, `${where}.${key}`),
  );
}

export function describeError(error) {
  return {
    name: error?.name ?? error?.constructor?.name ?? typeof error,
    message: String(error?.message ?? error),
    status: error?.status ?? error?.statusCode ?? error?.lastError?.statusCode ?? null,
    type: error?.type ?? null,
    code: error?.code ?? null,
    param: error?.param ?? null,
  };
}

export function print(result) {
  process.stdout.write(JSON.stringify({ ...result, requests: sent }) + "\n");
}
