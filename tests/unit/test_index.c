/* Unit tests of index/: records, queue, journal, keys that fit LMDB. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../index/index.h"
#include "check.h"

static char dir[64];

static struct idx *open_fresh(void)
{
	struct idx *idx;
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf %s/env", dir);
	CHECK(system(cmd) == 0);
	snprintf(cmd, sizeof(cmd), "%s/env", dir);
	CHECK_EQ(idx_open(cmd, 0, &idx), 0);
	return idx;
}

static void test_entry_round_trip(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	struct idx_entry e = {.state = IDX_ARCHIVED, .quality = 61, .orig_bytes = 3000000,
			      .stored_bytes = 900000, .view_bytes = 3100000, .ssim = 0.9912};
	struct idx_entry got;

	strcpy(e.suffix, ".heic");
	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_put(t, 42, &e), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_get(t, 42, &got), 0);
	CHECK_EQ(idx_get(t, 43, &got), -ENOENT);
	CHECK_EQ(idx_get(t, 42, &got), 0);
	idx_abort(t);
	CHECK_EQ(got.state, IDX_ARCHIVED);
	CHECK_EQ(got.view_bytes, 3100000);
	CHECK(got.ssim == 0.9912);
	CHECK(!strcmp(got.suffix, ".heic"));
	CHECK(got.updated > 0);
	idx_close(idx);
}

static void test_stats_count_states(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	struct idx_stats st;

	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	for (uint64_t i = 1; i <= 100; i++) {
		struct idx_entry e = {.state = (uint32_t)(i % 5) + 1, .orig_bytes = 10,
				      .stored_bytes = i % 5 == 2 ? 4 : 10};
		CHECK_EQ(idx_put(t, i, &e), 0);
	}
	CHECK_EQ(idx_queue_put(t, 7, 1, "a/b"), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_stats(t, &st), 0);
	idx_abort(t);
	CHECK_EQ(st.files, 100);
	for (int s = IDX_STAGED; s < IDX_NSTATES; s++)
		CHECK_EQ(st.by_state[s], 20);
	CHECK_EQ(st.bytes_original, 1000);
	CHECK_EQ(st.bytes_stored, 880);
	CHECK_EQ(st.queued, 1);
	idx_close(idx);
}

static void test_queue_paths_follow_renames(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	char path[4097];
	uint64_t gen;

	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_queue_put(t, 1, 10, "trip/day1/IMG_1.JPG"), 0);
	CHECK_EQ(idx_queue_put(t, 2, 11, "trip/day10/IMG_2.JPG"), 0);
	CHECK_EQ(idx_queue_put(t, 3, 12, "trip"), 0);
	CHECK_EQ(idx_queue_put(t, 4, 13, "tripx/IMG.JPG"), 0);
	CHECK_EQ(idx_queue_rename(t, "trip/day1", "2026/day one"), 0);
	CHECK_EQ(idx_queue_rename(t, "trip", "journey"), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_queue_get(t, 1, &gen, path, sizeof(path)), 0);
	CHECK(!strcmp(path, "2026/day one/IMG_1.JPG"));
	CHECK_EQ(gen, 10);
	CHECK_EQ(idx_queue_get(t, 2, &gen, path, sizeof(path)), 0);
	CHECK(!strcmp(path, "journey/day10/IMG_2.JPG"));
	CHECK_EQ(idx_queue_get(t, 3, &gen, path, sizeof(path)), 0);
	CHECK(!strcmp(path, "journey"));
	CHECK_EQ(idx_queue_get(t, 4, &gen, path, sizeof(path)), 0);
	CHECK(!strcmp(path, "tripx/IMG.JPG")); /* a prefix that is not a parent */
	CHECK_EQ(idx_queue_get(t, 5, &gen, path, sizeof(path)), -ENOENT);
	idx_abort(t);
	idx_close(idx);
}

/* Paths far longer than LMDB's 511-byte key limit: the key is the inode. */
static void test_long_paths_fit(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	char *deep = malloc(4096), path[4097];
	uint64_t gen;

	memset(deep, 'n', 4095);
	for (int i = 255; i < 4095; i += 256)
		deep[i] = '/';
	deep[4095] = '\0';
	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_queue_put(t, 99, 1, deep), 0);
	struct idx_intent in = {.staged_ino = 99, .archive_ino = 100};
	strcpy(in.path, deep);
	strcpy(in.entry.suffix, ".heic");
	CHECK_EQ(idx_intent_put(t, &in), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_queue_get(t, 99, &gen, path, sizeof(path)), 0);
	CHECK(!strcmp(path, deep));
	CHECK_EQ(idx_queue_get(t, 99, &gen, path, 100), -ENAMETOOLONG);
	idx_abort(t);
	free(deep);
	idx_close(idx);
}

static int intent_seen;
static int on_intent(void *arg, const struct idx_intent *in)
{
	(void)arg;
	intent_seen++;
	CHECK_EQ(in->staged_ino, 5);
	CHECK_EQ(in->archive_ino, 6);
	CHECK(!strcmp(in->path, "a/IMG.JPG"));
	CHECK(!strcmp(in->entry.suffix, ".heic"));
	CHECK_EQ(in->entry.view_bytes, 777);
	return 0;
}

static void test_journal(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	struct idx_intent in = {.staged_ino = 5, .archive_ino = 6};

	strcpy(in.path, "a/IMG.JPG");
	strcpy(in.entry.suffix, ".heic");
	in.entry.view_bytes = 777;
	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_intent_put(t, &in), 0);
	CHECK_EQ(idx_commit(t), 0);
	intent_seen = 0;
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_intent_each(t, on_intent, NULL), 0);
	idx_abort(t);
	CHECK_EQ(intent_seen, 1);
	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_intent_del(t, 5), 0);
	CHECK_EQ(idx_intent_del(t, 5), 0);
	CHECK_EQ(idx_commit(t), 0);
	intent_seen = 0;
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_intent_each(t, on_intent, NULL), 0);
	idx_abort(t);
	CHECK_EQ(intent_seen, 0);
	idx_close(idx);
}

/* A second, read-only handle (what `hevcfs status` does) sees commits. */
static void test_reader_in_other_handle(void)
{
	struct idx *w = open_fresh(), *r;
	struct idx_txn *t;
	struct idx_entry e = {.state = IDX_KEPT};
	char path[300];

	snprintf(path, sizeof(path), "%s/env", dir);
	CHECK_EQ(idx_open(path, 1, &r), 0);
	CHECK_EQ(idx_begin(w, 1, &t), 0);
	CHECK_EQ(idx_put(t, 1, &e), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(r, 0, &t), 0);
	CHECK_EQ(idx_get(t, 1, &e), 0);
	idx_abort(t);
	idx_close(r);
	idx_close(w);
	CHECK_EQ(idx_open("/nonexistent/dir/env", 1, &r), -ENOENT);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/hevcfs-test-index-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	RUN(test_entry_round_trip);
	RUN(test_stats_count_states);
	RUN(test_queue_paths_follow_renames);
	RUN(test_long_paths_fit);
	RUN(test_journal);
	RUN(test_reader_in_other_handle);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return check_done("test_index");
}
