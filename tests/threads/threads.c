/* threads.c - kie in several OS threads at once, one lua_State and one client each.
 *
 *   threads BASE_URL [THREADS=8] [ROUNDS=100]
 *   env: KIE_THREADS_CPATH (default ./build/lua5.4/?.so), KIE_THREADS_LPATH
 *        (default ./lua/?.lua;./lua/?/init.lua), KIE_THREADS_KEY (default test-key)
 *
 * Every thread makes its own state (luaL_newstate), and all of them `require "kie"`
 * at the same moment (a barrier): kie.core's luaopen runs concurrently in every
 * thread, which is where curl_global_init is reached (kie_global_init guards it with
 * pthread_once). Then each does ROUNDS x (create_task + get_task) against the server
 * at BASE_URL on its own client, closes it and its state. Exits 0 when every round of
 * every thread succeeded; prints one line per thread and "N passed, N failed".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define MAX_THREADS 64

static const char *base_url;
static const char *cpath;
static const char *lpath;
static const char *api_key;
static int rounds;
static pthread_barrier_t barrier;

typedef struct {
  int index;
  int ok;          /* rounds that succeeded */
  char error[512]; /* first failure */
} job;

static const char chunk[] =
  "local url, key, rounds, index = ...\n"
  "local kie = require 'kie'\n"
  "local c = kie.new{ api_key = key, base_url = url, timeout = 10,\n"
  "  rate_limits = { create = false, poll = false } }\n"
  "local ok = 0\n"
  "for i = 1, rounds do\n"
  "  local task, err = c:create_task{ model = 'ideogram/v3-reframe',\n"
  "    input = { image_url = 'https://example.com/t' .. index .. '-' .. i .. '.png', image_size = 'square_hd' } }\n"
  "  if not task then error('create_task: ' .. tostring(err), 0) end\n"
  "  local info, gerr = c:get_task(task.taskId)\n"
  "  if not info then error('get_task: ' .. tostring(gerr), 0) end\n"
  "  if info.taskId ~= task.taskId or type(info.resultUrls) ~= 'table' then error('wrong task', 0) end\n"
  "  if info.param.input.image_url ~= 'https://example.com/t' .. index .. '-' .. i .. '.png' then\n"
  "    error('another thread\\'s task came back', 0)\n"
  "  end\n"
  "  ok = ok + 1\n"
  "end\n"
  "c:close()\n"
  "return ok\n";

static void *run(void *arg) {
  job *j = arg;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    snprintf(j->error, sizeof(j->error), "luaL_newstate failed");
    pthread_barrier_wait(&barrier);
    return NULL;
  }
  luaL_openlibs(L);
  /* the module under test first, then the system's (lua-cjson) */
  lua_getglobal(L, "package");
  lua_pushstring(L, cpath);
  lua_pushliteral(L, ";");
  lua_getfield(L, -3, "cpath");
  lua_concat(L, 3);
  lua_setfield(L, -2, "cpath");
  lua_pushstring(L, lpath);
  lua_pushliteral(L, ";");
  lua_getfield(L, -3, "path");
  lua_concat(L, 3);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  if (luaL_loadbuffer(L, chunk, sizeof(chunk) - 1, "=threads") != LUA_OK) {
    snprintf(j->error, sizeof(j->error), "%s", lua_tostring(L, -1));
    pthread_barrier_wait(&barrier);
    lua_close(L);
    return NULL;
  }
  lua_pushstring(L, base_url);
  lua_pushstring(L, api_key);
  lua_pushinteger(L, rounds);
  lua_pushinteger(L, j->index);
  /* everyone loads the module (and so initialises libcurl) at the same moment */
  pthread_barrier_wait(&barrier);
  if (lua_pcall(L, 4, 1, 0) != LUA_OK) {
    snprintf(j->error, sizeof(j->error), "%s", lua_tostring(L, -1));
  } else {
    j->ok = (int)lua_tointeger(L, -1);
  }
  lua_close(L);
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t th[MAX_THREADS];
  job jobs[MAX_THREADS];
  int n, i, passed = 0, failed = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s BASE_URL [THREADS=8] [ROUNDS=100]\n", argv[0]);
    return 2;
  }
  base_url = argv[1];
  n = argc > 2 ? atoi(argv[2]) : 8;
  rounds = argc > 3 ? atoi(argv[3]) : 100;
  if (n < 1 || n > MAX_THREADS || rounds < 1) {
    fprintf(stderr, "threads: 1..%d threads and at least one round\n", MAX_THREADS);
    return 2;
  }
  cpath = getenv("KIE_THREADS_CPATH") ? getenv("KIE_THREADS_CPATH") : "./build/lua5.4/?.so";
  lpath = getenv("KIE_THREADS_LPATH") ? getenv("KIE_THREADS_LPATH") : "./lua/?.lua;./lua/?/init.lua";
  api_key = getenv("KIE_THREADS_KEY") ? getenv("KIE_THREADS_KEY") : "test-key";
  pthread_barrier_init(&barrier, NULL, (unsigned)n);
  for (i = 0; i < n; i++) {
    memset(&jobs[i], 0, sizeof(jobs[i]));
    jobs[i].index = i + 1;
    if (pthread_create(&th[i], NULL, run, &jobs[i]) != 0) {
      fprintf(stderr, "threads: pthread_create failed\n");
      return 2; /* the others wait at the barrier forever: exit ends them */
    }
  }
  for (i = 0; i < n; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&barrier);
  for (i = 0; i < n; i++) {
    if (jobs[i].ok == rounds && jobs[i].error[0] == '\0') {
      passed++;
      printf("ok %d - thread %d: %d create+get rounds\n", i + 1, jobs[i].index, jobs[i].ok);
    } else {
      failed++;
      printf("not ok %d - thread %d: %d of %d rounds: %s\n", i + 1, jobs[i].index, jobs[i].ok, rounds,
             jobs[i].error);
    }
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
