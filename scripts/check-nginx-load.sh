#!/bin/sh
# The LuaJIT build of kie.core loads in nginx's Lua VM (Debian's
# libnginx-mod-http-lua) and makes a call from there.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
prefix=$(mktemp -d /tmp/kie-ngx.XXXXXX)
port=$(lua5.4 -e 'local s=require"socket"; local t=assert(s.bind("127.0.0.1",0)); local _,p=t:getsockname(); t:close(); print(p)')
user=""; [ "$(id -u)" = 0 ] && user="user root root;"
mkdir -p "$prefix/logs"
cat > "$prefix/nginx.conf" <<CONF
$user
worker_processes 1;
daemon on;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $prefix/tmp; proxy_temp_path $prefix/tmp; fastcgi_temp_path $prefix/tmp;
  uwsgi_temp_path $prefix/tmp; scgi_temp_path $prefix/tmp;
  lua_package_path "$root/lua/?.lua;$root/lua/?/init.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;";
  lua_package_cpath "$root/build/luajit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
  server {
    listen 127.0.0.1:$port;
    location / {
      content_by_lua_block {
        local kie = require "kie"
        local core = require "kie.core"
        local c = kie.new{api_key = "k", base_url = "http://127.0.0.1:1"}
        local _, err = c:get_task("x")
        ngx.say("kie ", kie._VERSION, " in ", jit and jit.version or _VERSION, " err=", err.kind)
      }
    }
  }
}
CONF
mkdir -p "$prefix/tmp"
env -u LD_PRELOAD nginx -p "$prefix" -c "$prefix/nginx.conf"
trap 'kill $(cat "$prefix/nginx.pid") 2>/dev/null; sleep 0.2; rm -rf "$prefix"' EXIT
i=0
until body=$(curl -sf "http://127.0.0.1:$port/"); do
  i=$((i + 1)); [ $i -gt 50 ] && { cat "$prefix/logs/error.log"; exit 1; }; sleep 0.1
done
echo "$body"
echo "$body" | grep -q "^kie .* in LuaJIT.* err=network$"
