/* kie.c - luaopen_kie_core and the module-level functions of kie.core.
 *
 * Caveats:
 *  - luaopen_kie_core is the only exported symbol; it sets no global.
 *  - It requires cjson.safe once (json.c) and raises a clear error when lua-cjson
 *    is missing.
 *  - now() is CLOCK_MONOTONIC in seconds; sleep() blocks the calling thread and is
 *    meant for scripts (the Lua layer injects its own sleep in games and nginx).
 *  - append_line is the journal's durability: one writev per record on O_APPEND,
 *    fsync, and an fsync of the directory when it created the file.
 *
 * Lua-facing (stack effect):
 *  require "kie.core" -> module                                [-0, +1]
 *  core.now() -> seconds                                       [-0, +1]
 *  core.sleep(s)                                               [-0, +0]
 *  core.encode(v) -> json | nil, msg                           [-0, +1|+2]
 *  core.decode(json) -> value | nil, msg                       [-0, +1|+2]
 *  core.decode_task(data) -> data | nil, msg                   [-0, +1|+2]
 *  core.append_line(path, line) -> true | nil, msg             [-0, +1|+2]
 *  (core.new: client.c; hmac_sha256_base64, equal: hmac.c; base64_encode: upload.c)
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <time.h>
#include <string.h>
#include <unistd.h>
#include "kie.h"

/* core.now() -> monotonic seconds: [-0, +1]. */
static int core_now(lua_State *L) {
  lua_pushnumber(L, kie_clock_now());
  return 1;
}

/* core.sleep(seconds): [-0, +0]. */
static int core_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (!(s > 0)) return 0;
  if (s > 86400) s = 86400;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

/* core.encode(value) -> json | nil, msg (empty tables as []): [-0, +1|+2]. */
static int core_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (kie_json_encode(L, 1)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* core.decode(json) -> value | nil, msg (null becomes nil): [-0, +1|+2]. */
static int core_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (kie_json_decode(L, s, n)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* core.decode_task(data) -> data with param/resultJson decoded, resultUrls lifted
 * | nil, msg: [-0, +1|+2]. The table is changed in place. */
static int core_decode_task(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (kie_response_decode_task(L, 1)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* fsyncs the directory holding path, so that a file just created there survives a
 * crash too. 0 on success, -1 with errno. */
static int sync_parent(const char *path) {
  const char *slash = strrchr(path, '/');
  char buf[4096];
  int fd, rc, saved;
  if (slash == NULL) {
    strcpy(buf, ".");
  } else if (slash == path) {
    strcpy(buf, "/");
  } else if ((size_t)(slash - path) < sizeof(buf)) {
    memcpy(buf, path, (size_t)(slash - path));
    buf[slash - path] = '\0';
  } else {
    errno = ENAMETOOLONG;
    return -1;
  }
  fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  rc = fsync(fd);
  saved = errno;
  close(fd);
  errno = saved;
  return rc;
}

/* core.append_line(path, line) -> true | nil, msg: appends line + "\n" to path in
 * one write (created 0600) and fsyncs it, and its directory when the file is new,
 * before returning, so the line survives a crash: [-0, +1|+2]. */
static int core_append_line(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n, done = 0;
  const char *line = luaL_checklstring(L, 2, &n);
  int fd, saved, created = 0;
  if (memchr(line, '\n', n) != NULL) return luaL_argerror(L, 2, "must not contain a newline");
  fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    created = fd >= 0;
    if (fd < 0 && errno == EEXIST) fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  }
  if (fd < 0) goto fail;
  while (done < n + 1) {
    /* the line and its newline in one write (O_APPEND: never split by another writer) */
    char nl = '\n';
    struct iovec v[2];
    int k = 0;
    ssize_t w;
    if (done < n) {
      v[k].iov_base = (void *)(line + done);
      v[k++].iov_len = n - done;
    }
    v[k].iov_base = &nl;
    v[k++].iov_len = 1;
    w = writev(fd, v, k);
    if (w < 0) {
      if (errno == EINTR) continue;
      goto fail_fd;
    }
    done += (size_t)w;
  }
  if (fsync(fd) != 0) goto fail_fd;
  if (close(fd) != 0) goto fail;
  if (created && sync_parent(path) != 0) goto fail;
  lua_pushboolean(L, 1);
  return 1;
fail_fd:
  saved = errno;
  close(fd);
  errno = saved;
fail:
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", path, strerror(errno));
  return 2;
}

static const luaL_Reg funcs[] = {
  {"append_line", core_append_line},
  {"new", kie_client_new},
  {"now", core_now},
  {"sleep", core_sleep},
  {"encode", core_encode},
  {"decode", core_decode},
  {"decode_task", core_decode_task},
  {NULL, NULL}
};

#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
int luaopen_kie_core(lua_State *L);

#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
int luaopen_kie_core(lua_State *L) {
  curl_version_info_data *v;
  if (!kie_transfer_global_init()) return luaL_error(L, "kie.core: curl_global_init failed");
  kie_json_init(L);
  kie_client_open(L);
  luaL_newlib(L, funcs);
  kie_hmac_open(L);
  kie_upload_open(L);
  lua_pushliteral(L, KIE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  v = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, v && v->version ? v->version : "?");
  lua_setfield(L, -2, "curl_version");
  lua_pushstring(L, v && v->ssl_version ? v->ssl_version : "none");
  lua_setfield(L, -2, "ssl_version");
  lua_pushboolean(L, v && (v->features & CURL_VERSION_ASYNCHDNS));
  lua_setfield(L, -2, "async_dns");
  return 1;
}
