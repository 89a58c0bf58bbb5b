/* host.c - a C program that embeds Lua (5.4 or LuaJIT 2.1) the way a game engine
 * does, and drives examples/host/game.lua at 60 Hz: the game starts 100 kie.ai
 * jobs in kie.spawn coroutines, and each frame calls game.frame(), which only
 * calls client:step(0). The host times every frame() call and prints
 *   frames=N completed=N failed=N tasks=N max_in_flight=N init_ms=X
 *   step_mean_ms=X step_p99_ms=X step_max_ms=X
 * as its last line (one line). See README.md in this folder for the build lines.
 *
 *   usage: host [REPO_ROOT]          (default ".")
 *   env:   KIE_BASE_URL, KIE_API_KEY (required; the spec points them at the mock)
 *          KIE_TASKS (100), KIE_MAX_FRAMES (3600 = one minute)
 *   exit:  0 every job succeeded; 1 frame cap reached; 2 Lua error or bad setup;
 *          3 every job ended but some failed
 *
 * Caveats:
 *  - One lua_State, one thread. kie's client is not thread-safe; if you run Lua
 *    on another thread, call client:step from that thread only (client:wakeup is
 *    the one call meant for another thread).
 *  - frame() must never block: it calls step(0) only. Nothing in game.lua may
 *    call the blocking client API outside kie.spawn (it would stall the frame for
 *    a whole HTTP request), nor the core's sleep.
 *  - kie/core.so must be built for the same Lua as this host (5.4 and LuaJIT
 *    modules are not interchangeable): this host looks in build/lua5.4 or
 *    build/luajit under REPO_ROOT (override with -DKIE_BUILD_DIR='"..."').
 *  - core.so leaves the Lua API symbols to the host; linking the shared
 *    liblua5.4 / libluajit-5.1 provides them. With a static Lua, link with
 *    -Wl,-E so that the module finds them.
 *  - DNS runs on libcurl's threaded resolver, so step(0) does not wait for name
 *    lookups; the mock is 127.0.0.1 anyway.
 *  - The measured time is the whole frame() call: step(0), the callbacks and
 *    coroutines it resumes, and any garbage collection Lua does meanwhile.
 *  - Frames are paced with clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) on a
 *    fixed 16.67 ms grid; a late frame re-bases the grid instead of bursting.
 *  - Timings are printed, never judged: a loaded test machine is slow, not wrong.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifndef KIE_BUILD_DIR
#ifdef LUA_JITLIBNAME /* only LuaJIT's lualib.h defines it */
#define KIE_BUILD_DIR "luajit"
#else
#define KIE_BUILD_DIR "lua5.4"
#endif
#endif

#define FRAME_NS 16666667L /* 60 Hz */

/* Monotonic time in nanoseconds (no Lua stack). */
static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Sleeps until the absolute monotonic time t_ns (no Lua stack). */
static void sleep_until(long long t_ns) {
  struct timespec ts;
  int rc;
  ts.tv_sec = (time_t)(t_ns / 1000000000LL);
  ts.tv_nsec = (long)(t_ns % 1000000000LL);
  do {
    rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
  } while (rc == EINTR);
}

/* qsort comparator for doubles (no Lua stack). */
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Message handler: turns the error into a traceback string: [-1, +1]. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = luaL_typename(L, 1); /* a non-string error value */
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function under nargs args with msgh; 0 after printing an error: [-(nargs+1), +nres|+0]. */
static int call(lua_State *L, int nargs, int nres, const char *what) {
  int base = lua_gettop(L) - nargs; /* the function's slot */
  int rc;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (rc != 0) {
    fprintf(stderr, "host: %s: %s\n", what, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* package[field] = first .. ";" .. package[field]: [-0, +0]. */
static void prepend_path(lua_State *L, const char *field, const char *first) {
  lua_getglobal(L, "package");
  lua_pushstring(L, first);
  lua_pushliteral(L, ";");
  lua_getfield(L, -3, field);
  lua_concat(L, 3);
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

/* Runs root/examples/host/game.lua; returns a registry ref to its table, or LUA_NOREF: [-0, +0]. */
static int load_game(lua_State *L, const char *root) {
  lua_pushfstring(L, "%s/examples/host/game.lua", root);
  if (luaL_loadfile(L, lua_tostring(L, -1)) != 0) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    lua_pop(L, 2);
    return LUA_NOREF;
  }
  lua_remove(L, -2); /* the file name */
  if (!call(L, 0, 1, "game.lua")) return LUA_NOREF;
  if (!lua_istable(L, -1)) {
    fprintf(stderr, "host: game.lua must return a table\n");
    lua_pop(L, 1);
    return LUA_NOREF;
  }
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Pushes the function game[name] and returns 1; or prints, returns 0: [-0, +1|+0]. */
static int push_method(lua_State *L, int game, const char *name) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, game);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  if (lua_isfunction(L, -1)) return 1;
  fprintf(stderr, "host: game.%s is not a function\n", name);
  lua_pop(L, 1);
  return 0;
}

/* game.init{ base_url =, api_key =, tasks = }: [-0, +0]. */
static int game_init(lua_State *L, int game, const char *url, const char *key, int tasks) {
  if (!push_method(L, game, "init")) return 0;
  lua_createtable(L, 0, 3);
  lua_pushstring(L, url);
  lua_setfield(L, -2, "base_url");
  lua_pushstring(L, key);
  lua_setfield(L, -2, "api_key");
  lua_pushinteger(L, tasks);
  lua_setfield(L, -2, "tasks");
  return call(L, 1, 0, "game.init");
}

/* game.frame() -> *finished, *in_flight; 0 on a Lua error: [-0, +0]. */
static int game_frame(lua_State *L, int frame_ref, int *finished, long *in_flight) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, frame_ref);
  if (!call(L, 0, 2, "game.frame")) return 0;
  *finished = lua_toboolean(L, -2);
  *in_flight = (long)lua_tointeger(L, -1);
  lua_pop(L, 2);
  return 1;
}

/* game.summary() -> completed, failed, total, max_in_flight: [-0, +0]. */
static int game_summary(lua_State *L, int game, long out[4]) {
  int i;
  if (!push_method(L, game, "summary")) return 0;
  if (!call(L, 0, 4, "game.summary")) return 0;
  for (i = 0; i < 4; i++) out[i] = (long)lua_tointeger(L, i - 4);
  lua_pop(L, 4);
  return 1;
}

/* Environment integer with a default (no Lua stack). */
static long env_long(const char *name, long dflt) {
  const char *s = getenv(name);
  char *end;
  long v;
  if (s == NULL || *s == '\0') return dflt;
  v = strtol(s, &end, 10);
  return (*end == '\0' && v > 0) ? v : dflt;
}

/* Sets up Lua, runs the frame loop, prints the figures (the only lua_State owner). */
int main(int argc, char **argv) {
  const char *root = argc > 1 ? argv[1] : ".";
  const char *url = getenv("KIE_BASE_URL"), *key = getenv("KIE_API_KEY");
  long tasks = env_long("KIE_TASKS", 100), max_frames = env_long("KIE_MAX_FRAMES", 3600);
  double *times, *sorted, total_ms = 0, max_ms = 0, p99_ms = 0, init_ms = 0;
  long frames = 0, in_flight = 0, sum[4] = {0, 0, 0, 0};
  int game, frame_ref = LUA_NOREF, finished = 0, status = 2;
  long long t0, t, next;
  lua_State *L;

  if (url == NULL || key == NULL) {
    fprintf(stderr, "host: set KIE_BASE_URL and KIE_API_KEY\n");
    return 2;
  }
  times = malloc(sizeof(double) * (size_t)max_frames);
  sorted = malloc(sizeof(double) * (size_t)max_frames);
  L = luaL_newstate();
  if (times == NULL || sorted == NULL || L == NULL) {
    fprintf(stderr, "host: out of memory\n");
    return 2;
  }
  luaL_openlibs(L);
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", root, root);
  prepend_path(L, "path", lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushfstring(L, "%s/build/" KIE_BUILD_DIR "/?.so", root);
  prepend_path(L, "cpath", lua_tostring(L, -1));
  lua_pop(L, 1);

  game = load_game(L, root);
  if (game == LUA_NOREF) goto done;
  t0 = now_ns();
  if (!game_init(L, game, url, key, (int)tasks)) goto done;
  init_ms = (double)(now_ns() - t0) / 1e6;
  if (!push_method(L, game, "frame")) goto done;
  frame_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  next = now_ns();
  while (!finished && frames < max_frames) {
    next += FRAME_NS;
    t = now_ns();
    if (t > next) next = t; /* late: re-base the grid, no burst of frames */
    sleep_until(next);
    t0 = now_ns();
    if (!game_frame(L, frame_ref, &finished, &in_flight)) goto done;
    times[frames] = (double)(now_ns() - t0) / 1e6;
    total_ms += times[frames];
    if (times[frames] > max_ms) max_ms = times[frames];
    frames++;
    if (frames % 60 == 0) {
      fprintf(stderr, "host: frame %ld: %ld pending\n", frames, in_flight);
    }
  }
  if (!game_summary(L, game, sum)) goto done;
  if (frames > 0) {
    size_t rank;
    memcpy(sorted, times, sizeof(double) * (size_t)frames);
    qsort(sorted, (size_t)frames, sizeof(double), cmp_double);
    rank = (size_t)ceil(0.99 * (double)frames); /* nearest rank, 1-based */
    p99_ms = sorted[rank - 1];
  }
  if (!finished) {
    fprintf(stderr, "host: gave up after %ld frames\n", frames);
    status = 1;
  } else {
    status = sum[1] == 0 && sum[0] == sum[2] ? 0 : 3;
  }
  printf("frames=%ld completed=%ld failed=%ld tasks=%ld max_in_flight=%ld init_ms=%.3f "
         "step_mean_ms=%.3f step_p99_ms=%.3f step_max_ms=%.3f\n",
         frames, sum[0], sum[1], sum[2], sum[3], init_ms,
         frames > 0 ? total_ms / (double)frames : 0.0, p99_ms, max_ms);
  fflush(stdout);

done:
  lua_close(L);
  free(times);
  free(sorted);
  return status;
}
