/* index — LMDB environment, record layout, queue and commit journal. */
#include "index.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Virtual size of the map: entries are ~300 bytes, so this holds tens of
 * millions of files; the file itself only grows as it fills. */
#define IDX_MAP_SIZE (16ull << 30)

struct idx {
	MDB_env *env;
	MDB_dbi entries, queue, journal, meta;
};

struct idx_txn {
	struct idx *idx;
	MDB_txn *txn;
};

/* Translate an LMDB return code to -errno, logging what LMDB said. */
static int mdb_err(int rc, const char *what)
{
	if (rc == 0)
		return 0;
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	log_msg(LOG_ERR, "index: %s: %s", what, mdb_strerror(rc));
	if (rc == MDB_MAP_FULL)
		return -ENOSPC;
	if (rc > 0)
		return -rc;
	return -EIO;
}

/* Keys are big-endian so cursor order is numeric order. */
static void ino_key(uint64_t ino, unsigned char buf[8], MDB_val *k)
{
	for (int i = 7; i >= 0; i--, ino >>= 8)
		buf[i] = (unsigned char)ino;
	k->mv_size = 8;
	k->mv_data = buf;
}

static uint64_t key_ino(const MDB_val *k)
{
	const unsigned char *p = k->mv_data;
	uint64_t v = 0;

	if (k->mv_size != 8)
		return 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* Open the named databases and check or write the schema version. */
static int idx_setup(struct idx *idx, int read_only)
{
	MDB_txn *txn;
	unsigned flags = read_only ? 0 : MDB_CREATE;
	int rc;

	rc = mdb_txn_begin(idx->env, NULL, read_only ? MDB_RDONLY : 0, &txn);
	if (rc)
		return mdb_err(rc, "begin");
	if ((rc = mdb_dbi_open(txn, "entries", flags, &idx->entries)) ||
	    (rc = mdb_dbi_open(txn, "queue", flags, &idx->queue)) ||
	    (rc = mdb_dbi_open(txn, "journal", flags, &idx->journal)) ||
	    (rc = mdb_dbi_open(txn, "meta", flags, &idx->meta))) {
		mdb_txn_abort(txn);
		return mdb_err(rc, "open databases");
	}
	MDB_val k = {.mv_size = 6, .mv_data = "schema"}, v;
	rc = mdb_get(txn, idx->meta, &k, &v);
	if (rc == MDB_NOTFOUND && !read_only) {
		uint32_t ver = IDX_SCHEMA_VERSION;
		v.mv_size = sizeof(ver);
		v.mv_data = &ver;
		rc = mdb_put(txn, idx->meta, &k, &v, 0);
	} else if (rc == 0) {
		uint32_t ver = 0;
		if (v.mv_size == sizeof(ver))
			memcpy(&ver, v.mv_data, sizeof(ver));
		if (ver != IDX_SCHEMA_VERSION) {
			log_msg(LOG_ERR, "index: schema version %u, this hevcfs reads %u", ver,
				IDX_SCHEMA_VERSION);
			mdb_txn_abort(txn);
			return -EPROTO;
		}
	}
	if (rc && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return mdb_err(rc, "schema");
	}
	return mdb_err(mdb_txn_commit(txn), "commit");
}

int idx_open(const char *dir, int read_only, struct idx **out)
{
	struct idx *idx = calloc(1, sizeof(*idx));
	unsigned flags = MDB_NOTLS | MDB_NOSYNC | (read_only ? MDB_RDONLY : 0);
	int rc;

	if (!idx)
		return -ENOMEM;
	if (!read_only && mkdir(dir, 0700) == -1 && errno != EEXIST) {
		rc = -errno;
		goto out_free;
	}
	rc = mdb_err(mdb_env_create(&idx->env), "create");
	if (rc)
		goto out_free;
	mdb_env_set_maxdbs(idx->env, 8);
	mdb_env_set_mapsize(idx->env, IDX_MAP_SIZE);
	mdb_env_set_maxreaders(idx->env, 1022);
	rc = mdb_env_open(idx->env, dir, flags, 0600);
	if (rc) {
		rc = rc == ENOENT ? -ENOENT : mdb_err(rc, dir);
		goto out_env;
	}
	rc = idx_setup(idx, read_only);
	if (rc)
		goto out_env;
	*out = idx;
	return 0;

out_env:
	mdb_env_close(idx->env);
out_free:
	free(idx);
	return rc;
}

void idx_close(struct idx *idx)
{
	if (!idx)
		return;
	mdb_env_sync(idx->env, 1);
	mdb_env_close(idx->env);
	free(idx);
}

int idx_sync(struct idx *idx)
{
	return mdb_err(mdb_env_sync(idx->env, 1), "sync");
}

int idx_begin(struct idx *idx, int write, struct idx_txn **out)
{
	struct idx_txn *t = calloc(1, sizeof(*t));
	int rc;

	if (!t)
		return -ENOMEM;
	t->idx = idx;
	rc = mdb_txn_begin(idx->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
	if (rc) {
		free(t);
		return mdb_err(rc, "begin");
	}
	*out = t;
	return 0;
}

int idx_commit(struct idx_txn *txn)
{
	int rc = mdb_err(mdb_txn_commit(txn->txn), "commit");
	free(txn);
	return rc;
}

void idx_abort(struct idx_txn *txn)
{
	if (!txn)
		return;
	mdb_txn_abort(txn->txn);
	free(txn);
}

int idx_get(struct idx_txn *txn, uint64_t ino, struct idx_entry *e)
{
	unsigned char kb[8];
	MDB_val k, v;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_get(txn->txn, txn->idx->entries, &k, &v);
	if (rc)
		return mdb_err(rc, "get");
	if (v.mv_size != sizeof(*e))
		return -EPROTO;
	memcpy(e, v.mv_data, sizeof(*e));
	return 0;
}

int idx_put(struct idx_txn *txn, uint64_t ino, const struct idx_entry *e)
{
	unsigned char kb[8];
	struct idx_entry copy = *e;
	MDB_val k, v = {.mv_size = sizeof(copy), .mv_data = &copy};

	copy.updated = (int64_t)time(NULL);
	ino_key(ino, kb, &k);
	return mdb_err(mdb_put(txn->txn, txn->idx->entries, &k, &v, 0), "put");
}

/* Delete key k from dbi; a missing key is fine. */
static int del_key(struct idx_txn *txn, MDB_dbi dbi, uint64_t ino)
{
	unsigned char kb[8];
	MDB_val k;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_del(txn->txn, dbi, &k, NULL);
	return rc == MDB_NOTFOUND ? 0 : mdb_err(rc, "del");
}

int idx_del(struct idx_txn *txn, uint64_t ino)
{
	return del_key(txn, txn->idx->entries, ino);
}

/* Queue value: 8-byte generation, then the path (no terminator). */
int idx_queue_put(struct idx_txn *txn, uint64_t ino, uint64_t gen, const char *path)
{
	size_t len = strlen(path);
	unsigned char kb[8];
	MDB_val k, v = {.mv_size = 8 + len};
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_put(txn->txn, txn->idx->queue, &k, &v, MDB_RESERVE);
	if (rc)
		return mdb_err(rc, "queue put");
	memcpy(v.mv_data, &gen, 8);
	memcpy((char *)v.mv_data + 8, path, len);
	return 0;
}

/* Decode a queue value into gen and path; -ENAMETOOLONG if it does not fit. */
static int queue_val(const MDB_val *v, uint64_t *gen, char *path, size_t size)
{
	if (v->mv_size < 8)
		return -EPROTO;
	memcpy(gen, v->mv_data, 8);
	if (v->mv_size - 8 >= size)
		return -ENAMETOOLONG;
	memcpy(path, (char *)v->mv_data + 8, v->mv_size - 8);
	path[v->mv_size - 8] = '\0';
	return 0;
}

int idx_queue_get(struct idx_txn *txn, uint64_t ino, uint64_t *gen, char *path, size_t size)
{
	unsigned char kb[8];
	MDB_val k, v;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_get(txn->txn, txn->idx->queue, &k, &v);
	if (rc)
		return mdb_err(rc, "queue get");
	return queue_val(&v, gen, path, size);
}

int idx_queue_del(struct idx_txn *txn, uint64_t ino)
{
	return del_key(txn, txn->idx->queue, ino);
}

int idx_queue_each(struct idx_txn *txn,
		   int (*fn)(void *arg, uint64_t ino, uint64_t gen, const char *path), void *arg)
{
	MDB_cursor *cur;
	MDB_val k, v;
	char *path = malloc(4097);
	int rc;

	if (!path)
		return -ENOMEM;
	rc = mdb_cursor_open(txn->txn, txn->idx->queue, &cur);
	if (rc) {
		free(path);
		return mdb_err(rc, "cursor");
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		uint64_t gen;
		if (queue_val(&v, &gen, path, 4097) == 0 && fn(arg, key_ino(&k), gen, path))
			break;
	}
	mdb_cursor_close(cur);
	free(path);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "queue each");
}

/* Rewrite queued paths equal to from, or below it, to live under to. The
 * matches are collected first and written after the cursor is closed. */
int idx_queue_rename(struct idx_txn *txn, const char *from, const char *to)
{
	size_t flen = strlen(from), tlen = strlen(to), n = 0, cap = 0;
	struct moved {
		uint64_t ino, gen;
		char *path;
	} *list = NULL;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, ret = 0;

	rc = mdb_cursor_open(txn->txn, txn->idx->queue, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const char *p = (const char *)v.mv_data + 8;
		size_t plen = v.mv_size - 8;

		if (v.mv_size < 8 || plen < flen || memcmp(p, from, flen) != 0 ||
		    (plen > flen && p[flen] != '/'))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct moved *grown = realloc(list, cap * sizeof(*list));
			if (!grown) {
				ret = -ENOMEM;
				break;
			}
			list = grown;
		}
		char *np = malloc(tlen + plen - flen + 1);
		if (!np) {
			ret = -ENOMEM;
			break;
		}
		memcpy(np, to, tlen);
		memcpy(np + tlen, p + flen, plen - flen);
		np[tlen + plen - flen] = '\0';
		list[n].ino = key_ino(&k);
		memcpy(&list[n].gen, v.mv_data, 8);
		list[n++].path = np;
	}
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND && !ret)
		ret = mdb_err(rc, "queue rename");
	for (size_t i = 0; i < n; i++) {
		if (!ret)
			ret = idx_queue_put(txn, list[i].ino, list[i].gen, list[i].path);
		free(list[i].path);
	}
	free(list);
	return ret;
}

/* Journal value: the fixed fields, then the path. */
struct intent_rec {
	uint64_t staged_ino, archive_ino;
	struct idx_entry entry;
};

int idx_intent_put(struct idx_txn *txn, const struct idx_intent *in)
{
	struct intent_rec r = {in->staged_ino, in->archive_ino, in->entry};
	size_t len = strnlen(in->path, sizeof(in->path));
	unsigned char kb[8];
	MDB_val k, v = {.mv_size = sizeof(r) + len};
	int rc;

	ino_key(in->staged_ino, kb, &k);
	rc = mdb_put(txn->txn, txn->idx->journal, &k, &v, MDB_RESERVE);
	if (rc)
		return mdb_err(rc, "journal put");
	memcpy(v.mv_data, &r, sizeof(r));
	memcpy((char *)v.mv_data + sizeof(r), in->path, len);
	return 0;
}

int idx_intent_del(struct idx_txn *txn, uint64_t staged_ino)
{
	return del_key(txn, txn->idx->journal, staged_ino);
}

int idx_intent_each(struct idx_txn *txn, int (*fn)(void *arg, const struct idx_intent *in),
		    void *arg)
{
	struct idx_intent *in = malloc(sizeof(*in));
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	if (!in)
		return -ENOMEM;
	rc = mdb_cursor_open(txn->txn, txn->idx->journal, &cur);
	if (rc) {
		free(in);
		return mdb_err(rc, "cursor");
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct intent_rec r;
		size_t len;

		if (v.mv_size < sizeof(r) || v.mv_size - sizeof(r) >= sizeof(in->path))
			continue;
		memcpy(&r, v.mv_data, sizeof(r));
		len = v.mv_size - sizeof(r);
		memset(in, 0, sizeof(*in));
		in->staged_ino = r.staged_ino;
		in->archive_ino = r.archive_ino;
		in->entry = r.entry;
		memcpy(in->path, (char *)v.mv_data + sizeof(r), len);
		if (fn(arg, in))
			break;
	}
	mdb_cursor_close(cur);
	free(in);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "journal each");
}

int idx_each(struct idx_txn *txn, int (*fn)(void *arg, uint64_t ino, const struct idx_entry *e),
	     void *arg)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	rc = mdb_cursor_open(txn->txn, txn->idx->entries, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct idx_entry e;
		if (v.mv_size != sizeof(e))
			continue;
		memcpy(&e, v.mv_data, sizeof(e));
		if (fn(arg, key_ino(&k), &e))
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "each");
}

/* Add one entry to the totals. */
static int stats_add(void *arg, uint64_t ino, const struct idx_entry *e)
{
	struct idx_stats *st = arg;

	(void)ino;
	st->files++;
	if (e->state < IDX_NSTATES)
		st->by_state[e->state]++;
	st->bytes_original += e->orig_bytes;
	st->bytes_stored += e->stored_bytes;
	return 0;
}

int idx_stats(struct idx_txn *txn, struct idx_stats *st)
{
	MDB_stat ms;
	int rc;

	memset(st, 0, sizeof(*st));
	rc = mdb_stat(txn->txn, txn->idx->queue, &ms);
	if (rc)
		return mdb_err(rc, "stat");
	st->queued = ms.ms_entries;
	return idx_each(txn, stats_add, st);
}

const char *idx_state_name(enum idx_state s)
{
	static const char *const names[IDX_NSTATES] = {
		[IDX_STAGED] = "staged",     [IDX_PENDING] = "pending", [IDX_ARCHIVED] = "archived",
		[IDX_KEPT] = "kept",         [IDX_FAILED] = "failed",
	};
	return s > 0 && s < IDX_NSTATES ? names[s] : "unknown";
}
