// Peer: Node's built-in fetch (undici; connections are kept alive and pooled).
//   node bench/clients/node_fetch.mjs seq URL N REQUEST_JSON      create + get, N times
//   node bench/clients/node_fetch.mjs conc URL N REQUEST_JSON P   N creates, P in flight
// HTTPS trust: NODE_EXTRA_CA_CERTS=ca.pem. Prints "requests=<n> seconds=<s>".
const [mode, url, nStr, body, pStr] = process.argv.slice(2);
const n = Number(nStr), inflight = Number(pStr || 32);
const KEY = "bench-key-0b5e9c", TASK = "task_ideogram_1765179922911";
const req = JSON.parse(body);
const headers = { Authorization: `Bearer ${KEY}`, Accept: "application/json" };
const postHeaders = { ...headers, "Content-Type": "application/json" };

function fail(msg) { console.error("node_fetch: " + msg); process.exit(1); }

async function create() {
  const r = await fetch(url + "/api/v1/jobs/createTask",
    { method: "POST", headers: postHeaders, body: JSON.stringify(req) });
  const env = await r.json();
  if (r.status !== 200 || env.code !== 200 || env.data.taskId !== TASK) fail("bad create answer");
  return env.data.taskId;
}

async function get(id) {
  const r = await fetch(url + "/api/v1/jobs/recordInfo?taskId=" + encodeURIComponent(id), { headers });
  const env = await r.json();
  const data = env.data;
  data.param = JSON.parse(data.param);
  data.resultJson = JSON.parse(data.resultJson);
  data.resultUrls = data.resultJson.resultUrls;
  if (env.code !== 200 || data.state !== "success" || !data.resultUrls.length) fail("bad recordInfo answer");
}

const t0 = process.hrtime.bigint();
let requests = 0;
if (mode === "seq") {
  for (let i = 0; i < n; i++) await get(await create());
  requests = 2 * n;
} else {
  let next = 0;
  async function worker() { while (next < n) { next++; await create(); } }
  await Promise.all(Array.from({ length: inflight }, worker));
  requests = n;
}
const s = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(`requests=${requests} seconds=${s.toFixed(6)}`);
