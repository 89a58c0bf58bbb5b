# lua-kie - build, test, demo. Variable names are LuaRocks' own, so
# `luarocks make` and a plain `make` agree. Pick the Lua with LUA=lua5.1|lua5.2|
# lua5.3|lua5.4|luajit (default lua5.4); the module lands in build/$(LUA)/kie/core.so.

LUA        ?= lua5.4
PKG_LUA     = $(if $(filter luajit,$(LUA)),luajit,$(LUA))
LUA_INCDIR ?= $(patsubst -I%,%,$(firstword $(shell pkg-config --cflags-only-I $(PKG_LUA) 2>/dev/null) -I/usr/include/$(LUA)))
CURL_INCDIR ?= $(patsubst -I%,%,$(firstword $(shell pkg-config --cflags-only-I libcurl 2>/dev/null) -I/usr/include))
CURL_LIBDIR ?= $(shell pkg-config --variable=libdir libcurl 2>/dev/null)
LIBFLAG    ?= -shared
INST_PREFIX ?= /usr/local
LUA_VERSION_DIR = $(if $(filter luajit,$(LUA)),5.1,$(patsubst lua%,%,$(LUA)))
INST_LIBDIR ?= $(INST_PREFIX)/lib/lua/$(LUA_VERSION_DIR)
INST_LUADIR ?= $(INST_PREFIX)/share/lua/$(LUA_VERSION_DIR)
INST_BINDIR ?= $(INST_PREFIX)/bin
DESTDIR    ?=
# one source of truth: the define in the rockspec
KIE_VERSION = $(shell sed -n 's/.*KIE_VERSION=\\"\([^\\]*\)\\".*/\1/p' kie-scm-1.rockspec)

CFLAGS     ?= -O2 -g
WARN        = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-function
ifeq ($(WERROR),1)
WARN       += -Werror
endif
REAL_CFLAGS = $(CFLAGS) $(WARN) -std=gnu99 -fPIC -fvisibility=hidden \
              -DKIE_VERSION='"$(KIE_VERSION)"' -I$(LUA_INCDIR) -I$(CURL_INCDIR) $(SAN)
LIBS        = -L$(CURL_LIBDIR) -lcurl -lcrypto -lpthread

BUILD      ?= build/$(LUA)$(if $(SAN),-san,)
SRCS        = $(wildcard src/*.c)
OBJS        = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
HDRS        = $(wildcard src/*.h)
SO          = $(BUILD)/kie/core.so
LUA_SRC     = $(wildcard lua/kie/*.lua)

.PHONY: all build build-fleet install-fleet install test test-unit test-asan test-valgrind test-versions demo deps \
        clean lint rock-check nginx-check docs

all: build
build: $(SO)

$(BUILD)/obj/%.o: src/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(REAL_CFLAGS) -c $< -o $@

$(SO): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(SAN) -o $@ $(OBJS) $(LIBS) $(LDFLAGS)

# Fleet mode's Redis client (kie.redis on hiredis, Debian libhiredis-dev): its own
# target and rock (kie-fleet-scm-1.rockspec); kie.core never links hiredis.
FLEET_SRCS  = $(wildcard src/fleet/*.c)
FLEET_OBJS  = $(patsubst src/fleet/%.c,$(BUILD)/obj/fleet/%.o,$(FLEET_SRCS))
FLEET_SO    = $(BUILD)/kie/redis.so
HIREDIS_CFLAGS ?= $(shell pkg-config --cflags hiredis 2>/dev/null)
HIREDIS_LIBS   ?= $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis)

build-fleet: $(FLEET_SO)

$(BUILD)/obj/fleet/%.o: src/fleet/%.c src/fleet/redis.h src/compat.h
	@mkdir -p $(dir $@)
	$(CC) $(REAL_CFLAGS) $(HIREDIS_CFLAGS) -c $< -o $@

$(FLEET_SO): $(FLEET_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(SAN) -o $@ $(FLEET_OBJS) $(HIREDIS_LIBS) $(LDFLAGS)

install-fleet: $(FLEET_SO)
	install -d $(DESTDIR)$(INST_LIBDIR)/kie $(DESTDIR)$(INST_LUADIR)/kie
	install -m 0755 $(FLEET_SO) $(DESTDIR)$(INST_LIBDIR)/kie/redis.so
	install -m 0644 lua/kie/fleet.lua lua/kie/redis_ngx.lua lua/kie/fleet_journal.lua lua/kie/fleet_events.lua \
	  $(DESTDIR)$(INST_LUADIR)/kie/

install: $(SO)
	install -d $(DESTDIR)$(INST_LIBDIR)/kie $(DESTDIR)$(INST_LUADIR)/kie
	install -m 0755 $(SO) $(DESTDIR)$(INST_LIBDIR)/kie/core.so
	install -m 0644 $(LUA_SRC) $(DESTDIR)$(INST_LUADIR)/kie/
	install -d $(DESTDIR)$(INST_BINDIR)
	install -m 0755 bin/kie $(DESTDIR)$(INST_BINDIR)/kie

# The two commands of the README. Each installs what is missing first.
deps:
	@sh scripts/deps.sh $(DEPS)

demo:
	@sh scripts/deps.sh runtime
	@$(MAKE) --no-print-directory build LUA=lua5.4 >/dev/null
	@lua5.4 examples/demo.lua

test:
	@sh scripts/deps.sh test
	@sh scripts/test.sh

# Pieces of `make test`, runnable alone.
test-unit: build build-fleet
	busted --lua=$(LUA) --cpath='./$(BUILD)/?.so' spec

test-asan:
	@sh scripts/test.sh asan

test-valgrind:
	@sh scripts/test.sh valgrind

test-versions:
	@sh scripts/test.sh versions

lint:
	luacheck lua spec examples bin

# HTML API reference of the Lua layer (LDoc, Debian lua-ldoc) from the doc comments;
# config.ld says what goes in. Any LDoc warning fails the target.
docs:
	@command -v ldoc >/dev/null || { echo "make docs: ldoc is missing (apt-get install lua-ldoc)" >&2; exit 2; }
	ldoc --fatalwarnings .

clean:
	rm -rf build .tree

# --- benchmarks, fuzzing, soak, threads, GC (bench/README.md) -------------------------
FUZZ_SECONDS ?= 60
SOAK_CALLS   ?= 100000
# specs that run their code in other processes (nginx, CLI children, the examples)
# gain nothing from this process's GC settings
GC_SPECS = $(filter-out spec/cli_spec.lua spec/ngx_spec.lua spec/ngx_fleet_spec.lua spec/mock_spec.lua spec/demo_spec.lua \
           spec/host_spec.lua spec/love_spec.lua,$(wildcard spec/*_spec.lua))
GC_GEN   = 'collectgarbage("generational", 1, 10)'
GC_INC   = 'collectgarbage("incremental"); collectgarbage("setpause", 50); collectgarbage("setstepmul", 200)'
GC_MODES ?= $(GC_GEN) $(GC_INC)

.PHONY: bench bench-fleet bench-fleet-callbacks soak-fleet-kill soak-fleet-outage soak-fleet-batch fuzz soak soak-stateful test-threads test-gc

bench:
	@sh bench/run.sh

# fleet pacing across processes on network namespaces, skewed clocks, with and without latency
# (bench/fleet.lua; FLEET_PROCS, FLEET_HOSTS, FLEET_SECONDS, FLEET_LATENCY, FLEET_MODE ...): about 4.5 minutes
bench-fleet:
	@$(MAKE) --no-print-directory build build-fleet LUA=lua5.4 >/dev/null
	@LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/fleet.lua

# waits woken by callbacks across processes (bench/fleet_callbacks.lua; LAT_TASKS,
# LOAD_TASKS, LOAD_DROP, BENCH_PARTS ...): about 2 minutes
bench-fleet-callbacks:
	@$(MAKE) --no-print-directory build build-fleet LUA=lua5.4 >/dev/null
	@LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/fleet_callbacks.lua

# the fleet journal's kill -9 proof, long (bench/fleet_kill.lua; FLEET_PROCS, FLEET_SECONDS,
# KILL_EVERY, FLEET_LEASE, FLEET_KILL_SEEDS=1,2,...)
soak-fleet-kill:
	@$(MAKE) --no-print-directory build build-fleet LUA=lua5.4 >/dev/null
	@LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/fleet_kill.lua

# fleet mode while Redis is away (bench/fleet_outage.lua; FLEET_OUTAGE_SEEDS=1,2,3,
# FLEET_OUTAGE_KINDS=restart,empty,freeze,cut, FLEET_PROCS, FLEET_OUTAGE ...): about 75 s per seed
soak-fleet-outage:
	@$(MAKE) --no-print-directory build build-fleet LUA=lua5.4 >/dev/null
	@LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' LUA_CPATH='./build/lua5.4/?.so;;' lua5.4 bench/fleet_outage.lua

# fleet batches across processes, seeded: FLEET_BATCH_RUNS seeds from FLEET_BATCH_SEED,
# each with FLEET_BATCH_ITEMS items, FLEET_BATCH_WORKERS workers, FLEET_BATCH_KILLS kill -9s
FLEET_BATCH_RUNS    ?= 10
FLEET_BATCH_SEED    ?= 1
FLEET_BATCH_ITEMS   ?= 80
FLEET_BATCH_WORKERS ?= 4
FLEET_BATCH_KILLS   ?= 3
soak-fleet-batch:
	@$(MAKE) --no-print-directory build build-fleet LUA=lua5.4 >/dev/null
	@for i in $$(seq 0 $$(($(FLEET_BATCH_RUNS) - 1))); do s=$$(($(FLEET_BATCH_SEED) + 2 * i)); \
	  echo "== soak-fleet-batch: seed $$s"; \
	  FLEET_BATCH_SEED=$$s FLEET_BATCH_ITEMS=$(FLEET_BATCH_ITEMS) FLEET_BATCH_WORKERS=$(FLEET_BATCH_WORKERS) \
	  FLEET_BATCH_KILLS=$(FLEET_BATCH_KILLS) busted --lua=lua5.4 --cpath='./build/lua5.4/?.so' \
	    spec/fleet_batch_processes_spec.lua || exit 1; done

fuzz:
	@FUZZ_SECONDS=$(FUZZ_SECONDS) sh fuzz/run.sh

soak:
	@SOAK_CALLS=$(SOAK_CALLS) sh bench/soak.sh

# the stateful randomized test (spec/stateful_spec.lua) over many more seeds and longer
# op lists than the suite's, every op and fault kind enabled, under ASan + UBSan; no
# seed starts after STATEFUL_SECONDS (bench/README.md)
STATEFUL_SEEDS   ?= 1000
STATEFUL_OPS     ?= 400
STATEFUL_SECONDS ?= 900
soak-stateful:
	@STATEFUL_SEEDS=$(STATEFUL_SEEDS) STATEFUL_OPS=$(STATEFUL_OPS) \
	  STATEFUL_SECONDS=$(STATEFUL_SECONDS) sh bench/soak_stateful.sh

test-threads:
	@sh tests/threads/run.sh

# the suite again under an aggressive collector (Lua 5.4: generational with a minor
# collection every 1 % of growth, then incremental with pause 50): finalizers and
# weak tables get exercised at many more points than by default. One mode only:
# make test-gc GC_MODES='$(GC_GEN)'  (CI does that: ~30 s instead of ~80 s)
test-gc:
	@$(MAKE) --no-print-directory build LUA=lua5.4 >/dev/null
	@for gc in $(GC_MODES); do echo "== test-gc: $$gc"; \
	  lua5.4 -e "$$gc" "$$(command -v busted)" --cpath='./build/lua5.4/?.so' \
	    --exclude-tags=examples $(GC_SPECS) || exit 1; done
