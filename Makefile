# hevcfs — one plain Makefile. `make` builds ./hevcfs; `make test` runs every
# test (release and ASan+UBSan builds); `make bench` measures; `make deps`
# installs the Debian packages the build and the tests need.

PKGS      := fuse3 libheif libde265 libavformat libavcodec libavutil libswscale libswresample libturbojpeg lmdb libcrypto
VERSION   := 0.1.0
PREFIX    ?= /usr/local

CC        ?= cc
WARN      := -Wall -Wextra -Wstrict-prototypes -Wmissing-declarations -Wshadow -Werror
CFLAGS    ?= -O2 -g
CPPFLAGS  += -D_GNU_SOURCE -DHEVCFS_VERSION=\"$(VERSION)\"
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ALL_CFLAGS = -std=c17 $(WARN) $(CFLAGS) $(CPPFLAGS) $(PKG_CFLAGS) -MMD -MP
LDLIBS    += $(PKG_LIBS) -lpthread -lm

LIB_SRC   := $(wildcard lib/*.c) $(wildcard codec/*.c) $(wildcard index/*.c) $(wildcard fs/*.c)
TOOL_SRC  := $(wildcard tools/*.c)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)

# Three build trees: release (build/), ASan+UBSan (build/asan/) and
# ThreadSanitizer (build/tsan/, the daemon's threads).
SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
TSAN_FLAGS := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
obj = $(patsubst %.c,build/$(1)%.o,$(2))

.PHONY: all asan tsan tsan-build crash fuzz-build test unit-test mount-test bench fuzz format install uninstall clean deps demo
all: hevcfs

build/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

build/asan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -c $< -o $@

build/tsan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(TSAN_FLAGS) -c $< -o $@

hevcfs: $(call obj,,$(LIB_SRC) $(TOOL_SRC))
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

build/asan/hevcfs: $(call obj,asan/,$(LIB_SRC) $(TOOL_SRC))
	$(CC) $(SAN_FLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

asan: build/asan/hevcfs $(patsubst tests/unit/%.c,build/asan/tests/%,$(UNIT_SRC))

build/tsan/hevcfs: $(call obj,tsan/,$(LIB_SRC) $(TOOL_SRC))
	$(CC) $(TSAN_FLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

build/tsan/tests/%: tests/unit/%.c $(call obj,tsan/,$(LIB_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(TSAN_FLAGS) -o $@ $(filter %.c %.o,$^) $(LDFLAGS) $(LDLIBS)

tsan-build: build/tsan/hevcfs build/tsan/tests/test_fs

# The daemon's threads under ThreadSanitizer: the unit tests of the core and
# the mount tests that race it (also a stage of `make test`).
tsan: tsan-build
	@TEST_STAGES=tsan tests/run.sh

build/tests/%: tests/unit/%.c $(call obj,,$(LIB_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(filter %.c %.o,$^) $(LDFLAGS) $(LDLIBS)

build/asan/tests/%: tests/unit/%.c $(call obj,asan/,$(LIB_SRC))
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -o $@ $(filter %.c %.o,$^) $(LDFLAGS) $(LDLIBS)

UNIT_BIN      := $(patsubst tests/unit/%.c,build/tests/%,$(UNIT_SRC))
UNIT_ASAN_BIN := $(patsubst tests/unit/%.c,build/asan/tests/%,$(UNIT_SRC))

# The whole suite: unit tests and mount tests, release then ASan+UBSan.
# Every crash state of a photo, a video, an edit and two races, recovered
# and checked (tests/crash; also part of every stage of `make test`).
crash: hevcfs
	@/usr/bin/python3 tests/crash/check.py

test: hevcfs asan tsan-build fuzz-build $(UNIT_BIN)
	@tests/run.sh

# Figures against the disk, bindfs and passthrough_hp (root; see bench/run.sh).
# The packages come first: a fresh clone builds hevcfs after them.
bench:
	@sh tools/deps.sh bench
	@$(MAKE) -s hevcfs
	@sh bench/run.sh

deps:
	@tools/deps.sh

demo:
	@sh tools/demo.sh

# Fuzzers (clang's libFuzzer) on hostile bytes: the JPEG parser and
# archiver, the view renderer and mapper with the embedded digests, the
# index record decoder, the name rules. The library is built once for them
# (coverage, ASan, UBSan); each target links it.
FUZZ_CC      ?= clang-14
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_FLAGS   := -g -O1 -fno-omit-frame-pointer $(FUZZ_SAN)
FUZZ_TARGETS := fuzz_jpeg fuzz_view fuzz_index fuzz_names
FUZZ_OBJ     := $(patsubst %.c,build/fuzz/obj/%.o,$(LIB_SRC))

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c17 $(WARN) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(CPPFLAGS) \
	  $(PKG_CFLAGS) -MMD -MP -c $< -o $@

build/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz_common.h $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c17 $(WARN) $(FUZZ_FLAGS) -fsanitize=fuzzer $(CPPFLAGS) $(PKG_CFLAGS) \
	  -o $@ $< $(FUZZ_OBJ) $(PKG_LIBS) -lpthread -lm

.SECONDARY: $(FUZZ_OBJ)
fuzz-build: $(addprefix build/fuzz/,$(FUZZ_TARGETS))

fuzz:
	@sh tools/deps.sh
	@$(MAKE) -s fuzz-build
	@FUZZ_TIME=$${FUZZ_TIME:-60} sh tests/fuzz/run.sh

format:
	clang-format -i $(wildcard */*.c */*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c tests/fuzz/*.h)

# systemd looks for units of /usr/local in /usr/local/lib/systemd/system too
UNITDIR   ?= $(PREFIX)/lib/systemd/system

install: hevcfs
	install -D -m 0755 hevcfs $(DESTDIR)$(PREFIX)/bin/hevcfs
	ln -sf hevcfs $(DESTDIR)$(PREFIX)/bin/mount.hevcfs
	install -D -m 0644 doc/hevcfs.1 $(DESTDIR)$(PREFIX)/share/man/man1/hevcfs.1
	@mkdir -p $(DESTDIR)$(UNITDIR)
	sed 's|@BINDIR@|$(PREFIX)/bin|' doc/hevcfs@.service.in > $(DESTDIR)$(UNITDIR)/hevcfs@.service
	install -D -m 0644 doc/hevcfs.conf.example $(DESTDIR)$(PREFIX)/share/doc/hevcfs/hevcfs.conf.example

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/hevcfs $(DESTDIR)$(PREFIX)/bin/mount.hevcfs \
	      $(DESTDIR)$(PREFIX)/share/man/man1/hevcfs.1 $(DESTDIR)$(UNITDIR)/hevcfs@.service \
	      $(DESTDIR)$(PREFIX)/share/doc/hevcfs/hevcfs.conf.example

clean:
	rm -rf build hevcfs

-include $(shell find build -name '*.d' 2>/dev/null)
