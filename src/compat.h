/* compat.h - the few Lua 5.2+ C API calls this core uses, for Lua 5.1 and LuaJIT.
 *
 * Caveats:
 *  - Only what the core needs: luaL_setfuncs, luaL_newlib, lua_rawlen, lua_rawgetp,
 *    lua_rawsetp, luaL_testudata, lua_absindex. Written against the 5.3 API.
 *  - lua_rawgetp/lua_rawsetp on 5.1 key the table by a light userdata, which is
 *    what 5.2+ do too, so registry entries are the same on every version.
 */
#ifndef KIE_COMPAT_H
#define KIE_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502

#ifndef lua_rawlen
#define lua_rawlen(L, i) lua_objlen((L), (i))
#endif

#define lua_absindex(L, i) \
  (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)

/* Registers l's functions into the table at -(nup+2), sharing nup upvalues: [-nup, +0]. */
static void kie_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#define luaL_setfuncs(L, l, n) kie_compat_setfuncs((L), (l), (n))
#ifndef luaL_newlib
#define luaL_newlib(L, l) (lua_createtable((L), 0, (int)(sizeof(l) / sizeof((l)[0]) - 1)), luaL_setfuncs((L), (l), 0))
#endif

/* Pushes t[p] for the table at idx, keyed by the light userdata p: [-0, +1]. */
static void kie_compat_rawgetp(lua_State *L, int idx, const void *p) {
  idx = lua_absindex(L, idx);
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, idx);
}
#define lua_rawgetp(L, i, p) kie_compat_rawgetp((L), (i), (p))

/* Pops a value and stores it as t[p] for the table at idx: [-1, +0]. */
static void kie_compat_rawsetp(lua_State *L, int idx, const void *p) {
  idx = lua_absindex(L, idx);
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, idx);
}
#define lua_rawsetp(L, i, p) kie_compat_rawsetp((L), (i), (p))

/* Returns the userdata at idx if its metatable is tname's, else NULL: [-0, +0]. */
static void *kie_compat_testudata(lua_State *L, int idx, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p != NULL && lua_getmetatable(L, idx)) {
    luaL_getmetatable(L, tname);
    if (!lua_rawequal(L, -1, -2)) p = NULL;
    lua_pop(L, 2);
    return p;
  }
  return NULL;
}
#define luaL_testudata(L, i, t) kie_compat_testudata((L), (i), (t))

#endif /* LUA_VERSION_NUM < 502 */

#endif /* KIE_COMPAT_H */
