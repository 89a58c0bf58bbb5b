/* upload.c - the File Upload API's multipart stream upload.
 *
 * Caveats:
 *  - The file is streamed by libcurl from disk (curl_mime_filedata): it is never
 *    read into memory nor into a Lua string, so a 100 MB upload costs no heap.
 *    libcurl opens it only when the transfer runs; a file that vanished or became
 *    unreadable by then ends the transfer with CURLE_READ_ERROR (kind "io").
 *  - The request goes to upload_url .. "/api/file-stream-upload" only: the key is
 *    never sent anywhere else. The form's headers are the client's auth headers
 *    without the JSON Content-Type (libcurl writes the multipart one).
 *  - The form is owned by the transfer (kie_xfer.mime) and freed with it, on
 *    every path, after it is unbound from the easy handle.
 *  - Policy (which files, how large, what type) is the Lua layer's (kie.files);
 *    this file only refuses what cannot work (no upload_url, unreadable file).
 *  - The response is decoded by kie_response_push like every API call; the upload
 *    host's envelope {success, code, msg, data} is understood there.
 *  - The base64 JSON and URL uploads need nothing here: they go through call(),
 *    which accepts URLs under upload_url.
 *
 * Lua-facing (stack effect):
 *  client:upload(path, upload_path[, name[, type[, s]]]) -> data | nil, err  [-0, +1|+2]
 *  client:upload_start(...) -> transfer id | nil, err                       [-0, +1|+2]
 */
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include "kie.h"

/* Pushes nil, err{kind, op = "upload"}: [-0, +2]. */
static int upload_error(lua_State *L, kie_client *c, const char *kind, const char *msg) {
  kie_response_error(L, c, kind, msg, 0);
  lua_pushliteral(L, "upload");
  lua_setfield(L, -2, "op");
  return 2;
}

/* Adds a form part name=value (value NUL-terminated); no Lua: returns 0 on failure. */
static int add_text(curl_mime *form, const char *name, const char *value) {
  curl_mimepart *part = curl_mime_addpart(form);
  return part != NULL && curl_mime_name(part, name) == CURLE_OK &&
         curl_mime_data(part, value, CURL_ZERO_TERMINATED) == CURLE_OK;
}

/* upload's work once its arguments (at 2..5) are checked; -1: the client was
 * closed by Lua code run meanwhile: [-0, +1|+2]. */
static int upload_go(lua_State *L, kie_client *c, long timeout_ms, int async) {
  const char *path = lua_tostring(L, 2);
  const char *upload_path = lua_tostring(L, 3);
  const char *file_name = lua_tostring(L, 4);
  const char *mime_type = lua_tostring(L, 5);
  const char *url, *why = NULL;
  kie_xfer *x;
  curl_mimepart *part;
  CURLcode rc;
  if (c->upload_url == NULL) {
    return upload_error(L, c, "validation", "upload: the client has no upload_url");
  }
  lua_pushstring(L, c->upload_url);
  lua_pushliteral(L, "/api/file-stream-upload");
  lua_concat(L, 2);
  url = lua_tostring(L, -1);
  if (c->closed) return -1;
  x = kie_transfer_prepare(c, KIE_OP_UPLOAD, url, NULL, 0, 0, &why);
  if (x == NULL) return upload_error(L, c, "network", why);
  /* from here on x is on the client's live list: every exit frees it or hands it on */
  x->mime = curl_mime_init(x->easy);
  if (x->mime == NULL || (part = curl_mime_addpart(x->mime)) == NULL ||
      curl_mime_name(part, "file") != CURLE_OK) {
    kie_transfer_free(c, x);
    return upload_error(L, c, "network", "upload: out of memory building the form");
  }
  errno = 0;
  rc = curl_mime_filedata(part, path);
  if (rc != CURLE_OK) {
    int e = errno;
    kie_transfer_free(c, x);
    lua_pushfstring(L, "upload: cannot read %s: %s", path,
                    e ? strerror(e) : curl_easy_strerror(rc));
    return upload_error(L, c, "io", lua_tostring(L, -1));
  }
  if ((file_name != NULL && curl_mime_filename(part, file_name) != CURLE_OK) ||
      curl_mime_type(part, mime_type ? mime_type : "application/octet-stream") != CURLE_OK ||
      !add_text(x->mime, "uploadPath", upload_path) ||
      (file_name != NULL && !add_text(x->mime, "fileName", file_name)) ||
      curl_easy_setopt(x->easy, CURLOPT_MIMEPOST, x->mime) != CURLE_OK ||
      (timeout_ms > 0 && curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK)) {
    kie_transfer_free(c, x);
    return upload_error(L, c, "network", "upload: libcurl refused the form");
  }
  if (kie_transfer_launch(c, x, &why) == NULL) return upload_error(L, c, "network", why);
  return kie_client_settle(L, c, x, async);
}

/* upload(path, upload_path[, file_name[, mime_type[, timeout_s]]]): multipart POST
 * of the file at path with uploadPath (and fileName) parts: [-0, +1|+2].
 * Result (blocking): the envelope's data | nil, err; async: the transfer id. */
static int upload(lua_State *L, int async) {
  kie_client *c = kie_client_check(L, 1);
  lua_Number timeout;
  luaL_checkstring(L, 2);
  luaL_checkstring(L, 3);
  luaL_optstring(L, 4, NULL);
  luaL_optstring(L, 5, NULL);
  timeout = luaL_optnumber(L, 6, 0);
  if (!(timeout >= 0)) return luaL_argerror(L, 6, "must be a number >= 0");
  lua_settop(L, 5);
  kie_client_enter(c);
  return kie_client_leave(L, c, upload_go(L, c, kie_clock_ms(timeout), async));
}

/* client:upload(...) blocking, and client:upload_start(...) -> id: [-0, +1|+2]. */
int kie_upload_run(lua_State *L) { return upload(L, 0); }
int kie_upload_start(lua_State *L) { return upload(L, 1); }
