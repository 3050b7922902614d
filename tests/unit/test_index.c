/* Unit tests of index/: records, queue, journal, keys that fit LMDB. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

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
	struct idx_entry e = {.state = IDX_ARCHIVED,
			      .quality = 61,
			      .orig_bytes = 3000000,
			      .stored_bytes = 900000,
			      .view_bytes = 3100000,
			      .ssim = 0.9912};
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
		struct idx_entry e = {.state = (uint32_t)(i % 5) + 1,
				      .orig_bytes = 10,
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

/* Every field survives encoding; any shorter, longer or altered record is
 * refused without reading past its end. */
static void test_encoding(void)
{
	struct idx_entry e = {.state = IDX_KEPT,
			      .kind = IDX_KIND_VIDEO,
			      .flags = IDX_F_DAMAGED,
			      .carries = 5,
			      .quality = 22,
			      .gen = 1ull << 40,
			      .orig_bytes = 7,
			      .stored_bytes = 8,
			      .view_bytes = 9,
			      .done = 10,
			      .prev = 77,
			      .total = 11,
			      .updated = -12,
			      .started = 13,
			      .checked = 14,
			      .elapsed = 1.5,
			      .ssim = 0.25,
			      .view_ssim = 0.125,
			      .fps = 30};
	struct idx_entry got;
	uint8_t buf[IDX_ENTRY_MAX], bad[IDX_ENTRY_MAX + 1];
	size_t n;

	for (int i = 0; i < SUM_LEN; i++) {
		e.sum[i] = (uint8_t)i;
		e.orig_sum[i] = (uint8_t)(i + 1);
		e.view_sum[i] = (uint8_t)(i + 2);
		e.scan_sum[i] = (uint8_t)(i + 3);
		e.head_sum[i] = (uint8_t)(i + 4);
	}
	strcpy(e.suffix, ".mkv");
	strcpy(e.reason, "not smaller (95% of the source)");
	n = idx_entry_encode(&e, buf);
	CHECK(n <= IDX_ENTRY_MAX);
	CHECK_EQ(idx_entry_decode(buf, n, &got), 0);
	CHECK(memcmp(&e, &got, sizeof(e)) == 0);
	for (size_t len = 0; len < n; len++) {
		/* a copy of exactly len bytes, so ASan sees any overread */
		uint8_t *cut = malloc(len ? len : 1);
		memcpy(cut, buf, len);
		CHECK_EQ(idx_entry_decode(cut, len, &got), -EPROTO);
		free(cut);
	}
	memcpy(bad, buf, n);
	bad[n] = 0;
	CHECK_EQ(idx_entry_decode(bad, n + 1, &got), -EPROTO);
	bad[0] ^= 1;
	CHECK_EQ(idx_entry_decode(bad, n, &got), -EPROTO);
	memcpy(bad, buf, n);
	bad[1] = IDX_NSTATES; /* the state's low byte */
	CHECK_EQ(idx_entry_decode(bad, n, &got), -EPROTO);
	memcpy(bad, buf, n);
	bad[n - 1 - strlen(e.reason)] = 200; /* reason longer than the record */
	CHECK_EQ(idx_entry_decode(bad, n, &got), -EPROTO);
}

/* Reason groups as idx_reasons_each lists them. */
struct groups {
	struct {
		char group[160];
		uint64_t files, bytes;
	} seen[4];
	int n;
};

static int collect_group(void *arg, const char *group, const struct idx_count *c)
{
	struct groups *g = arg;

	snprintf(g->seen[g->n].group, sizeof(g->seen[g->n].group), "%s", group);
	g->seen[g->n].files = c->files;
	g->seen[g->n++].bytes = c->bytes_original;
	return g->n == 4;
}

/* The totals follow every put, replacement and deletion, by state and
 * kind, with damaged, unsummed and kept-by-reason counts. */
static void test_totals_follow_changes(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	struct idx_stats st;
	struct idx_entry e = {
	    .state = IDX_STAGED, .kind = IDX_KIND_PHOTO, .orig_bytes = 100, .stored_bytes = 100};
	struct groups g = {0};

	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_put(t, 1, &e), 0);
	CHECK_EQ(idx_put(t, 2, &e), 0);
	e.state = IDX_ARCHIVED;
	e.stored_bytes = 30;
	CHECK_EQ(idx_put(t, 1, &e), 0); /* replaces its staged self */
	e.state = IDX_KEPT;
	e.kind = IDX_KIND_OTHER;
	e.stored_bytes = 100;
	strcpy(e.reason, "not a photo or video");
	CHECK_EQ(idx_put(t, 3, &e), 0);
	e.kind = IDX_KIND_PHOTO;
	strcpy(e.reason, "not smaller (95% of the JPEG at q90)");
	CHECK_EQ(idx_put(t, 4, &e), 0);
	strcpy(e.reason, "not smaller (99% of the JPEG at q92)");
	e.sum[0] = 1;
	e.flags = IDX_F_DAMAGED;
	CHECK_EQ(idx_put(t, 5, &e), 0);
	CHECK_EQ(idx_commit(t), 0);

	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_stats(t, &st), 0);
	idx_abort(t);
	CHECK_EQ(st.files, 5);
	CHECK_EQ(st.by_state[IDX_STAGED], 1);
	CHECK_EQ(st.by_state[IDX_ARCHIVED], 1);
	CHECK_EQ(st.by_state[IDX_KEPT], 3);
	CHECK_EQ(st.by[IDX_ARCHIVED][IDX_KIND_PHOTO].bytes_stored, 30);
	CHECK_EQ(st.by[IDX_KEPT][IDX_KIND_PHOTO].files, 2);
	CHECK_EQ(st.by[IDX_KEPT][IDX_KIND_OTHER].files, 1);
	CHECK_EQ(st.bytes_original, 500);
	CHECK_EQ(st.bytes_stored, 430);
	CHECK_EQ(st.damaged, 1);
	CHECK_EQ(st.unsummed, 3); /* 1 archived, 3 and 4 kept, without sums */

	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_reasons_each(t, collect_group, &g), 0);
	idx_abort(t);
	CHECK_EQ(g.n, 2);
	CHECK(!strcmp(g.seen[0].group, "not a photo or video") && g.seen[0].files == 1);
	CHECK(!strcmp(g.seen[1].group, "not smaller") && g.seen[1].files == 2 &&
	      g.seen[1].bytes == 200);

	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	for (uint64_t i = 1; i <= 6; i++)
		CHECK_EQ(idx_del(t, i), 0); /* 6 was never there */
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_stats(t, &st), 0);
	g.n = 0;
	CHECK_EQ(idx_reasons_each(t, collect_group, &g), 0);
	idx_abort(t);
	CHECK_EQ(st.files, 0);
	CHECK_EQ(st.bytes_original, 0);
	CHECK_EQ(st.damaged, 0);
	CHECK_EQ(st.unsummed, 0);
	CHECK_EQ(g.n, 0);
	idx_close(idx);
}

/* Block digests are stored whole and read one at a time; an archived
 * entry is the origin of its original's digest, by inode and path (kept
 * current by renames), until it is no longer that archive. */
static void test_blocks_and_origins(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	uint8_t sums[3 * SUM_LEN], one[SUM_LEN];
	struct idx_entry e = {.state = IDX_ARCHIVED, .kind = IDX_KIND_PHOTO};
	uint64_t ino;
	char path[64];

	for (size_t i = 0; i < sizeof(sums); i++)
		sums[i] = (uint8_t)(i * 7);
	memset(e.orig_sum, 0xAB, SUM_LEN);
	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_blocks_put(t, 9, sums, 3), 0);
	CHECK_EQ(idx_put(t, 9, &e), 0);
	CHECK_EQ(idx_origin_put(t, e.orig_sum, 9, "a/b/IMG.JPG"), 0);
	CHECK_EQ(idx_origins_rename(t, "a", "c"), 0);
	CHECK_EQ(idx_origins_rename(t, "c/b/IMG", "x"), 0); /* not a path of it */
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_blocks_count(t, 9), 3);
	CHECK_EQ(idx_blocks_get(t, 9, 2, one), 0);
	CHECK(memcmp(one, sums + 2 * SUM_LEN, SUM_LEN) == 0);
	CHECK_EQ(idx_blocks_get(t, 9, 3, one), -ENOENT);
	CHECK_EQ(idx_blocks_get(t, 8, 0, one), -ENOENT);
	CHECK_EQ(idx_origin_get(t, e.orig_sum, &ino, path, sizeof(path)), 0);
	CHECK_EQ(ino, 9);
	CHECK(!strcmp(path, "c/b/IMG.JPG"));
	CHECK_EQ(idx_origin_get(t, e.orig_sum, &ino, path, 4), -ENAMETOOLONG);
	idx_abort(t);
	/* the same archive again (new figures): still the origin; a kept entry
	 * made from the same bytes is none; deleting the archive takes its
	 * blocks and origin with it */
	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	e.quality = 50;
	CHECK_EQ(idx_put(t, 9, &e), 0);
	CHECK_EQ(idx_origin_get(t, e.orig_sum, &ino, path, sizeof(path)), 0);
	e.state = IDX_KEPT;
	CHECK_EQ(idx_put(t, 10, &e), 0);
	CHECK_EQ(idx_origin_get(t, e.orig_sum, &ino, path, sizeof(path)), 0);
	CHECK_EQ(ino, 9);
	CHECK_EQ(idx_del(t, 9), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_blocks_count(t, 9), 0);
	CHECK_EQ(idx_origin_get(t, e.orig_sum, &ino, path, sizeof(path)), -ENOENT);
	idx_abort(t);
	idx_close(idx);
}

/* Named values round-trip and are apart from the schema record. */
static void test_meta(void)
{
	struct idx *idx = open_fresh();
	struct idx_txn *t;
	char buf[64];
	size_t len;

	CHECK_EQ(idx_begin(idx, 1, &t), 0);
	CHECK_EQ(idx_meta_put(t, "config", "crf=24", 6), 0);
	CHECK_EQ(idx_meta_put(t, "schema", "x", 1), 0);
	CHECK_EQ(idx_commit(t), 0);
	idx_close(idx);
	char path[300];
	snprintf(path, sizeof(path), "%s/env", dir);
	CHECK_EQ(idx_open(path, 1, &idx), 0); /* the schema record is intact */
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_meta_get(t, "config", buf, sizeof(buf), &len), 0);
	CHECK(len == 6 && !memcmp(buf, "crf=24", 6));
	CHECK_EQ(idx_meta_get(t, "config", buf, 3, &len), -ENOSPC);
	CHECK_EQ(idx_meta_get(t, "nothing", buf, sizeof(buf), &len), -ENOENT);
	idx_abort(t);
	idx_close(idx);
}

/* An index written by version 1 (entries stored as the C struct of then)
 * is upgraded when opened for writing, and refused read-only before. */
static void test_upgrade_from_v1(void)
{
	struct v1 {
		uint32_t state, quality;
		uint64_t gen, orig_bytes, stored_bytes, view_bytes, done, total;
		int64_t updated;
		double ssim, view_ssim, fps;
		char suffix[8];
		char reason[160];
	} o = {.state = IDX_ARCHIVED,
	       .quality = 60,
	       .orig_bytes = 1000,
	       .stored_bytes = 400,
	       .view_bytes = 1100,
	       .ssim = 0.991};
	char path[300];
	MDB_env *env;
	MDB_txn *mt;
	MDB_dbi ent, meta, jr;
	unsigned char key[8] = {0, 0, 0, 0, 0, 0, 0, 77};
	MDB_val k = {8, key}, v = {sizeof(o), &o};
	uint32_t ver = 1;
	MDB_val sk = {6, "schema"}, sv = {sizeof(ver), &ver};
	struct idx *idx;
	struct idx_txn *t;
	struct idx_entry e;
	struct idx_stats st;

	CHECK_EQ(sizeof(o), 256);
	snprintf(path, sizeof(path), "rm -rf %s/v1 && mkdir %s/v1", dir, dir);
	CHECK(system(path) == 0);
	snprintf(path, sizeof(path), "%s/v1", dir);
	strcpy(o.suffix, ".heic");
	CHECK_EQ(mdb_env_create(&env), 0);
	mdb_env_set_maxdbs(env, 8);
	CHECK_EQ(mdb_env_open(env, path, 0, 0600), 0);
	CHECK_EQ(mdb_txn_begin(env, NULL, 0, &mt), 0);
	CHECK_EQ(mdb_dbi_open(mt, "entries", MDB_CREATE, &ent), 0);
	CHECK_EQ(mdb_dbi_open(mt, "queue", MDB_CREATE, &jr), 0);
	CHECK_EQ(mdb_dbi_open(mt, "journal", MDB_CREATE, &jr), 0);
	CHECK_EQ(mdb_dbi_open(mt, "meta", MDB_CREATE, &meta), 0);
	CHECK_EQ(mdb_put(mt, ent, &k, &v, 0), 0);
	CHECK_EQ(mdb_put(mt, meta, &sk, &sv, 0), 0);
	CHECK_EQ(mdb_txn_commit(mt), 0);
	mdb_env_close(env);

	CHECK_EQ(idx_open(path, 1, &idx), -EPROTO);
	CHECK_EQ(idx_open(path, 0, &idx), 0);
	CHECK_EQ(idx_begin(idx, 0, &t), 0);
	CHECK_EQ(idx_get(t, 77, &e), 0);
	CHECK_EQ(idx_stats(t, &st), 0);
	idx_abort(t);
	CHECK_EQ(e.state, IDX_ARCHIVED);
	CHECK_EQ(e.kind, IDX_KIND_PHOTO);
	CHECK_EQ(e.view_bytes, 1100);
	CHECK(e.ssim == 0.991 && !strcmp(e.suffix, ".heic") && sum_is_zero(e.sum));
	CHECK_EQ(st.by[IDX_ARCHIVED][IDX_KIND_PHOTO].files, 1);
	CHECK_EQ(st.unsummed, 1);
	idx_close(idx);
	CHECK_EQ(idx_open(path, 1, &idx), 0);
	idx_close(idx);
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
	RUN(test_encoding);
	RUN(test_totals_follow_changes);
	RUN(test_blocks_and_origins);
	RUN(test_meta);
	RUN(test_upgrade_from_v1);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return check_done("test_index");
}
