/* callback_fuzz.c - libFuzzer harness over kie.callback.parse (webhook parsing and
 * HMAC verification), in an embedded Lua 5.4 state.
 *
 * The core's .c files are linked into this program and kie.core is registered in
 * package.preload, so `require "kie.callback"` (lua/kie/*.lua, found through
 * package.path = KIE_LUA_DIR/?.lua) runs on the very C code being fuzzed: JSON
 * decoding, decode_task, hmac_sha256_base64 and the constant-time equal.
 *
 * A Lua line hook feeds libFuzzer's extra counters, so the Lua paths guide it too.
 *
 * Input (text; see fuzz/corpus/callback/):
 *   line 1     flags, any of: k (verify with hmac_key), l (lower-case header names),
 *              s (replace the signature by the right one for this body and timestamp),
 *              t (hand parse a decoded table instead of the string), r (pass a `seen`
 *              table and parse twice: a verified callback must be refused the second time)
 *   line 2     X-Webhook-Timestamp value ("-" for no header)
 *   line 3     X-Webhook-Signature value ("-" for no header)
 *   the rest   the body
 * parse runs with now = 1769670760 and tolerance 300.
 *
 * Checked (abort = finding): parse never raises; it returns either an event (task_id a
 * non-empty string, state a string, task a table with a resultUrls table, verified a
 * boolean, true exactly when a key was given, and then the signature was the right one
 * and the timestamp within the window), or nil and an error of kind signature or
 * protocol with a string message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifndef KIE_LUA_DIR
#define KIE_LUA_DIR "lua"
#endif

int luaopen_kie_core(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static int fn_ref;

/* Coverage of the Lua code for libFuzzer: a line hook counts (previous line, line)
 * pairs of every Lua function into libFuzzer's extra counters, so inputs that take new
 * paths through kie/callback.lua are kept, not only those new to the C code. */
#define LUA_EDGES 8192
__attribute__((used, section("__libfuzzer_extra_counters")))
static uint8_t lua_edges[LUA_EDGES];
static uintptr_t prev_loc;

static void line_hook(lua_State *S, lua_Debug *ar) {
  uintptr_t loc;
  if (!lua_getinfo(S, "S", ar)) return;
  loc = ((uintptr_t)ar->source * 2654435761u) ^ ((uintptr_t)ar->currentline * 40503u);
  lua_edges[(loc ^ (prev_loc >> 1)) % LUA_EDGES]++;
  prev_loc = loc;
}

static const char driver[] =
  "local callback = require 'kie.callback'\n"
  "local core = require 'kie.core'\n"
  "local KEY, NOW, TOL = 'fuzz-webhook-hmac-key', 1769670760, 300\n"
  "local function id_of(body)\n"
  "  local doc = type(body) == 'table' and body or core.decode(body)\n"
  "  if type(doc) ~= 'table' then return '' end\n"
  "  local data = type(doc.data) == 'table' and doc.data or {}\n"
  "  local id = doc.taskId or data.taskId or data.task_id\n"
  "  return type(id) == 'string' and id or ''\n"
  "end\n"
  "local function check(ev, err, opts, ts, sig)\n"
  "  if ev then\n"
  "    assert(err == nil, 'event and error')\n"
  "    assert(type(ev.task_id) == 'string' and ev.task_id ~= '', 'task_id')\n"
  "    assert(type(ev.state) == 'string', 'state')\n"
  "    assert(type(ev.task) == 'table' and type(ev.task.resultUrls) == 'table', 'task')\n"
  "    assert(type(ev.verified) == 'boolean', 'verified')\n"
  "    if opts.hmac_key then\n"
  "      assert(ev.verified, 'not verified with a key')\n"
  "      assert(type(ts) == 'string' and type(sig) == 'string', 'verified without headers')\n"
  "      assert(sig == core.hmac_sha256_base64(KEY, ev.task_id .. '.' .. ts), 'accepted a wrong signature')\n"
  "      assert(math.abs(NOW - tonumber(ts)) <= TOL, 'accepted a stale timestamp')\n"
  "    else\n"
  "      assert(not ev.verified, 'verified without a key')\n"
  "    end\n"
  "  else\n"
  "    assert(type(err) == 'table', 'error is not a table')\n"
  "    assert(err.kind == 'signature' or err.kind == 'protocol', 'kind ' .. tostring(err.kind))\n"
  "    assert(type(err.message) == 'string', 'message')\n"
  "    if err.kind == 'signature' then assert(opts.hmac_key, 'signature error without a key') end\n"
  "  end\n"
  "end\n"
  "return function(flags, ts, sig, body)\n"
  "  local opts = { now = function() return NOW end, tolerance = TOL }\n"
  "  if flags:find('k', 1, true) then opts.hmac_key = KEY end\n"
  "  if flags:find('r', 1, true) then opts.seen = {} end\n"
  "  if ts == '-' then ts = nil end\n"
  "  if sig == '-' then sig = nil end\n"
  "  local b = body\n"
  "  if flags:find('t', 1, true) then\n"
  "    b = core.decode(body)\n"
  "    if type(b) ~= 'table' then return end\n"
  "  end\n"
  "  if flags:find('s', 1, true) and ts then sig = core.hmac_sha256_base64(KEY, id_of(b) .. '.' .. ts) end\n"
  "  local tsn = flags:find('l', 1, true) and 'x-webhook-timestamp' or 'X-Webhook-Timestamp'\n"
  "  local sgn = flags:find('l', 1, true) and 'x-webhook-signature' or 'X-Webhook-Signature'\n"
  "  local headers = { ['Content-Type'] = 'application/json' }\n"
  "  if ts then headers[tsn] = ts end\n"
  "  if sig then headers[sgn] = sig end\n"
  "  local ok, ev, err = pcall(callback.parse, b, headers, opts)\n"
  "  if not ok then error('parse raised: ' .. tostring(ev), 0) end\n"
  "  check(ev, err, opts, ts, sig)\n"
  "  if opts.seen and ev and ev.verified then\n"
  "    local ev2, err2 = callback.parse(b, headers, opts)\n"
  "    assert(ev2 == nil and err2.kind == 'signature', 'replay accepted')\n"
  "  end\n"
  "end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, KIE_LUA_DIR "/?.lua;" KIE_LUA_DIR "/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_kie_core);
  lua_setfield(L, -2, "kie.core");
  lua_pop(L, 2);
  if (luaL_loadbuffer(L, driver, sizeof(driver) - 1, "=callback_fuzz") != LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "callback_fuzz: driver: %s\n", lua_tostring(L, -1));
    abort();
  }
  fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  return 0;
}

/* Pushes the next line of [*p, end) (without its newline) and advances: */
static void push_line(const char **p, const char *end) {
  const char *nl = memchr(*p, '\n', (size_t)(end - *p));
  const char *e = nl ? nl : end;
  lua_pushlstring(L, *p, (size_t)(e - *p));
  *p = nl ? nl + 1 : end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = size ? (const char *)data : "", *end = p + size;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
  push_line(&p, end); /* flags */
  push_line(&p, end); /* timestamp */
  push_line(&p, end); /* signature */
  lua_pushlstring(L, p, (size_t)(end - p));
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    fprintf(stderr, "callback_fuzz: invariant broken: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  return 0;
}
