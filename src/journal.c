/* journal.c - the journal's durable append (core.append_line).
 *
 * Caveats:
 *  - One writev per record (the line and its newline) on O_APPEND, so records of
 *    several writers never interleave; then fsync, and an fsync of the directory
 *    when this call created the file, so a record survives a crash once returned.
 *  - The file is created 0600. A line may not contain a newline (raises).
 *
 * Lua-facing (stack effect):
 *  core.append_line(path, line) -> true | nil, msg             [-0, +1|+2]
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <string.h>
#include <unistd.h>
#include "kie.h"

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
static int journal_append_line(lua_State *L) {
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

/* Adds append_line to the module table at -1: [-0, +0]. */
void kie_journal_open(lua_State *L) {
  lua_pushcfunction(L, journal_append_line);
  lua_setfield(L, -2, "append_line");
}
