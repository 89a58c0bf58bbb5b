# examples/host/host.mk - builds the C host of examples/host for Lua 5.4 and LuaJIT.
# From the repository root:  make -f examples/host/host.mk   (or `include` it)
# Needs kie.core for the same Lua: make LUA=lua5.4 && make LUA=luajit.
HOST_CC     ?= cc
HOST_CFLAGS ?= -O2 -g -std=c99 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes

.PHONY: host host-lua5.4 host-luajit
host: host-lua5.4 host-luajit
host-lua5.4: build/host-lua5.4/host
host-luajit: build/host-luajit/host

build/host-lua5.4/host: examples/host/host.c
	@mkdir -p $(dir $@)
	$(HOST_CC) $(HOST_CFLAGS) -I/usr/include/lua5.4 $< -o $@ -llua5.4 -lm

build/host-luajit/host: examples/host/host.c
	@mkdir -p $(dir $@)
	$(HOST_CC) $(HOST_CFLAGS) -I/usr/include/luajit-2.1 $< -o $@ -lluajit-5.1 -lm
