// The server's HTTP API as small async functions. Every refusal carries a readable `detail`
// (HTTP 422 for a bad request, 429 for a full queue, 503 while the model cannot run), which the
// app shows as it is; a refused request never changes the song.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) { /* not JSON */ }
  return new ApiError(response.status, detail);
}

export async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postForBlob(url, body) {
  const response = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

export async function importMidi(file) {
  const response = await fetch("/api/midi/import", {
    method: "POST", headers: { "Content-Type": "audio/midi" }, body: await file.arrayBuffer(),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function cancelJob(jobId) {
  const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
  if (!response.ok && response.status !== 404) throw await failure(response);
}

// POSTs a generate request and calls onEvent for each NDJSON line. Resolves with the terminal
// event (done, cancelled or error); a stream that ends without one resolves with a synthetic
// error event, so the caller never waits on a silent end.
export async function streamGenerate(body, onEvent, signal) {
  const response = await fetch("/api/generate", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (!line) continue;
      const event = JSON.parse(line);
      onEvent(event);
      if (event.event === "done" || event.event === "cancelled" || event.event === "error") {
        reader.cancel().catch(() => {});
        return event;
      }
    }
  }
  const lost = { event: "error", message: "the connection closed before the generation finished" };
  onEvent(lost);
  return lost;
}
