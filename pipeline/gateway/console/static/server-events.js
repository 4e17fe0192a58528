// Server-sent events read with fetch() rather than EventSource: EventSource cannot send an
// Authorization header, and once the gateway requires tokens (auth.js) every request carries one.

import { authFetch } from "./auth.js";
import { GatewayError } from "./gateway.js";

// Yields {event, data} (data parsed as JSON) until the server ends the stream or `signal` aborts it.
export async function* serverEvents(url, what, signal) {
  let response;
  try {
    response = await authFetch(url, { headers: { Accept: "text/event-stream" }, signal });
  } catch (error) {
    if (error.name === "AbortError" || !(error instanceof TypeError)) throw error;
    throw new GatewayError(0, "unreachable", `Could not reach the gateway (${what}).`);
  }
  if (!response.ok) throw await GatewayError.of(response, what);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw new GatewayError(0, "unreachable", `Lost the connection to the gateway (${what}).`);
      }
      if (chunk.done) return;
      buffer += chunk.value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          const [field, value = ""] = line.split(/:(.*)/s);
          if (field === "event") event = value.trim();
          else if (field === "data") data.push(value.replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // a reader that stops early closes the stream
  }
}
