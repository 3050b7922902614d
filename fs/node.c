/*
 * node — the inodes the kernel knows, and the state of the files being
 * written: one struct fs_node per backing inode (an archived photo's JPEG
 * view and a HEIF photo's JPEG sibling have their own), found by the
 * kernel's inode number (the node's address) or by backing inode.
 *
 * A node lives while the kernel remembers lookups of it (nlookup) or hevcfs
 * holds it (refs: open handles, a job, the settle list, its children).
 * Looked-up nodes nobody holds sit on an LRU list; past max_nodes of them,
 * the notify thread asks the kernel to forget the oldest names, so neither
 * memory nor descriptors grow with the number of files.
 *
 * Everything here is under nodes.lock (rank FS_LOCK_NODES) but for the
 * atomic fields (gen, cancel) and fd, which changes only under the lock and
 * is read by the request threads that hold the node.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct fs_node {
	struct fs_node *hnext;		     /* hash chain (by backing inode and kind) */
	struct fs_node *lru_prev, *lru_next; /* looked up, held by nobody */
	struct fs_node *settle_next;	     /* on the settle list */
	struct fs_node *due_next;	     /* taken off it by settle_due, not yet queued */
	uint64_t generation;		     /* of this node id */
	uint64_t ino;			     /* backing inode */
	enum fs_kind kind;
	atomic_uint type;	/* S_IFMT; read without the lock */
	int fd;			/* O_PATH of the backing file, -1 */
	struct fs_node *parent; /* the directory it was last seen in (held) */
	char *lname, *bname;	/* its logical and backing names there */
	uint64_t view_bytes;	/* VIEW, SIBLING: the size shown */
	uint64_t nlookup;	/* the kernel's lookups */
	int refs;		/* hevcfs's references */
	int on_lru;
	int hashed;
	int is_root;
	/* the bytes */
	int writers;		  /* open handles that may write */
	int opens;		  /* open handles of any kind */
	int gone;		  /* no name left: nothing is staged again */
	int commit_waits;	  /* an archive waits for the last close */
	struct ready *ready;	  /* that archive, its files in work/ */
	int dirty;		  /* written since it was last queued */
	int settling;		  /* on the settle list (holds a reference) */
	int64_t settle_at;	  /* monotonic ms when it may be queued */
	uint64_t job_gen;	  /* the generation a job was last made for */
	atomic_uint_fast64_t gen; /* bumped by every change to the bytes */
	atomic_int cancel;	  /* set to abandon the running job */
	struct fs_check *check;	  /* its reads checked (sums.c), a reference */
	uint64_t check_ino;	  /* of that backing inode */
};

/* An invalidation for the notify thread. */
struct notice {
	enum { NOTICE_INODE, NOTICE_NAME } what;
	fuse_ino_t ino; /* the inode, or the directory of the name */
	char *name;
	struct notice *next;
};

struct fs_nodes {
	struct fs_mutex lock;
	struct fs_node **table;
	size_t size;
	struct fs_node *root;
	struct fs_node *lru_head, *lru_tail; /* oldest first */
	size_t nlru;
	size_t max;		/* looked-up nodes kept before asking to forget */
	struct fs_node *settle; /* list of settling nodes */
	pthread_cond_t settle_cond;
	int64_t settle_wake_at; /* when the settle thread next looks (ms) */
	int settle_kick;	/* a node joined that is due before that */
	pthread_t settle_thread;
	struct fs_mutex notify_lock; /* the notices */
	pthread_cond_t notify_cond;
	struct notice *notices, *notices_tail;
	int notify_stop;
	int dead_fd; /* what a node's descriptor refers to once its file is gone */
	pthread_t notify_thread;
	int started;
};

/* Node ids: unique for the mount's life (the kernel tells reused ids apart
 * by them), and generations of bytes, above any of an earlier mount. */
static atomic_uint_fast64_t node_generation;
static atomic_uint_fast64_t gen_counter;

/* Nodes kept looked up at most, whatever the descriptor limit allows. */
#define NODES_MAX 65536
/* Hash slots (a power of two). */
#define NODES_SLOTS 4096
/* Settling is a pause of settle_ms: a few ms later does not matter. */
#define SETTLE_TICK_MS 20

static uint64_t next_gen(void)
{
	uint64_t zero = 0;

	atomic_compare_exchange_strong(&gen_counter, &zero, (uint64_t)time(NULL) << 20);
	return atomic_fetch_add(&gen_counter, 1) + 1;
}

static size_t slot(const struct fs_nodes *t, uint64_t ino, enum fs_kind kind)
{
	uint64_t k = ino * 2 + (kind == FS_KIND_SIBLING);

	return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & (t->size - 1);
}

static int key_kind(enum fs_kind kind)
{
	return kind == FS_KIND_SIBLING;
}

/* Find by backing inode (a sibling apart); caller holds the lock. */
static struct fs_node *find(struct fs_nodes *t, uint64_t ino, enum fs_kind kind)
{
	for (struct fs_node *n = t->table[slot(t, ino, kind)]; n; n = n->hnext)
		if (n->ino == ino && key_kind(n->kind) == key_kind(kind))
			return n;
	return NULL;
}

static void hash_in(struct fs_nodes *t, struct fs_node *n)
{
	size_t s = slot(t, n->ino, n->kind);

	n->hnext = t->table[s];
	t->table[s] = n;
	n->hashed = 1;
}

static void hash_out(struct fs_nodes *t, struct fs_node *n)
{
	if (!n->hashed)
		return;
	for (struct fs_node **pp = &t->table[slot(t, n->ino, n->kind)]; *pp; pp = &(*pp)->hnext) {
		if (*pp == n) {
			*pp = n->hnext;
			break;
		}
	}
	n->hashed = 0;
}

static void lru_out(struct fs_nodes *t, struct fs_node *n)
{
	if (!n->on_lru)
		return;
	if (n->lru_prev)
		n->lru_prev->lru_next = n->lru_next;
	else
		t->lru_head = n->lru_next;
	if (n->lru_next)
		n->lru_next->lru_prev = n->lru_prev;
	else
		t->lru_tail = n->lru_prev;
	n->lru_prev = n->lru_next = NULL;
	n->on_lru = 0;
	t->nlru--;
}

/* n is looked up and nobody holds it: newest on the LRU. */
static void lru_in(struct fs_nodes *t, struct fs_node *n)
{
	if (n->on_lru || n == t->root)
		return;
	n->lru_prev = t->lru_tail;
	n->lru_next = NULL;
	if (t->lru_tail)
		t->lru_tail->lru_next = n;
	else
		t->lru_head = n;
	t->lru_tail = n;
	n->on_lru = 1;
	t->nlru++;
}

/* Put n where it belongs after a change of its counts: on the LRU when only
 * the kernel needs it, off it when held. */
static void lru_place(struct fs_nodes *t, struct fs_node *n)
{
	if (n->nlookup > 0 && n->refs == 0)
		lru_in(t, n);
	else
		lru_out(t, n);
}

/* Queue a notice for the notify thread (takes name). */
static void notice_add(struct fs_nodes *t, int what, fuse_ino_t ino, char *name)
{
	struct notice *x = calloc(1, sizeof(*x));

	if (!x) {
		free(name);
		return;
	}
	x->what = what;
	x->ino = ino;
	x->name = name;
	fs_mutex_lock(&t->notify_lock);
	if (t->notices_tail)
		t->notices_tail->next = x;
	else
		t->notices = x;
	t->notices_tail = x;
	pthread_cond_signal(&t->notify_cond);
	fs_mutex_unlock(&t->notify_lock);
}

/* Past max looked-up nodes: ask the kernel to forget the oldest names (it
 * sends FORGET for those it does not use). Caller holds the lock. */
static void lru_trim(struct fs *fs, struct fs_nodes *t)
{
	size_t want = t->max - t->max / 8;

	(void)fs;
	if (t->nlru <= t->max)
		return;
	for (struct fs_node *n = t->lru_head; n && t->nlru > want; n = t->lru_head) {
		lru_out(t, n);
		if (n->parent && n->lname)
			notice_add(t, NOTICE_NAME, fs_node_id(n->parent), strdup(n->lname));
	}
}

#ifndef NDEBUG
/* In debug builds a count that goes wrong aborts at once, naming the node
 * (and, in a sanitizer build, where). */
void __sanitizer_print_stack_trace(void) __attribute__((weak));
#define node_assert(cond, n, what)                                                                 \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "hevcfs: node %llu: %s (refs %d, lookups %llu)\n",         \
				(unsigned long long)(n)->ino, what, (n)->refs,                     \
				(unsigned long long)(n)->nlookup);                                 \
			if (__sanitizer_print_stack_trace)                                         \
				__sanitizer_print_stack_trace();                                   \
			abort();                                                                   \
		}                                                                                  \
	} while (0)
#else
#define node_assert(cond, n, what) ((void)0)
#endif

/* Free n, whom nothing holds or knows; caller holds the lock. Returns its
 * parent, to be released by the caller (after the unlock for its fd). */
static struct fs_node *node_free(struct fs_nodes *t, struct fs_node *n, int *fd,
				 struct fs_check **check)
{
	struct fs_node *parent = n->parent;

	hash_out(t, n);
	lru_out(t, n);
	*fd = n->fd;
	free(n->lname);
	free(n->bname);
	free(n->ready);
	*check = n->check;
	free(n);
	return parent;
}

/* Drop one reference of n (and up its parents while they go); caller holds
 * the lock. Descriptors to close are collected in fds, closed by the caller
 * once the lock is released (close_all); a check to drop likewise. */
static void unref(struct fs *fs, struct fs_nodes *t, struct fs_node *n, int *fds, int *nfds,
		  int maxfds)
{
	while (n) {
		struct fs_node *parent;
		struct fs_check *c;
		int fd;

		node_assert(n->refs > 0, n, "a reference dropped that nobody held");
		n->refs--;
		if (n->refs > 0 || n->nlookup > 0 || n == t->root) {
			lru_place(t, n);
			return;
		}
		parent = node_free(t, n, &fd, &c);
		if (fd >= 0 && *nfds < maxfds)
			fds[(*nfds)++] = fd;
		else if (fd >= 0)
			close(fd);
		/* its handles are gone: nobody else holds the check */
		fs_check_put(c);
		n = parent;
	}
	(void)fs;
}

/* Close what unref collected. */
static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/* Descriptors unref may collect at once (a chain of parents). */
#define UNREF_FDS 64

/* Make n's descriptor refer to fd's file (taken; -1: to nothing, the
 * placeholder). Once a node has a descriptor its number stays the same for
 * the node's life, so a request thread using it meanwhile reaches the old
 * file or the new one, never another's. Caller holds the lock. */
static void set_fd(struct fs_nodes *t, struct fs_node *n, int fd)
{
	if (n == t->root) {
		if (fd >= 0)
			close(fd);
		return;
	}
	if (n->fd < 0) {
		n->fd = fd;
		return;
	}
	if (dup3(fd >= 0 ? fd : t->dead_fd, n->fd, O_CLOEXEC) == -1)
		log_msg(LOG_ERR, "nodes: cannot replace a descriptor: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

int fs_nodes_new(struct fs *fs)
{
	struct fs_nodes *t = calloc(1, sizeof(*t));
	struct rlimit rl;
	pthread_condattr_t ca;

	if (!t)
		return -ENOMEM;
	t->size = NODES_SLOTS;
	t->table = calloc(t->size, sizeof(*t->table));
	t->root = calloc(1, sizeof(*t->root));
	t->dead_fd = open("/dev/null", O_PATH | O_CLOEXEC);
	if (!t->table || !t->root || t->dead_fd < 0) {
		if (t->dead_fd >= 0)
			close(t->dead_fd);
		free(t->table);
		free(t->root);
		free(t);
		return -ENOMEM;
	}
	fs_mutex_init(&t->lock, FS_LOCK_NODES, "nodes");
	fs_mutex_init(&t->notify_lock, FS_LOCK_LEAF, "notify");
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->settle_cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&t->notify_cond, NULL);
	/* a descriptor per looked-up node: as many as the limit allows, with
	 * room for handles, the index and the jobs */
	t->max = NODES_MAX;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		if (rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur / 2 < t->max)
			t->max = rl.rlim_cur / 2 > 256 ? rl.rlim_cur / 2 : 256;
	}
	if (fs->cfg->max_nodes > 0 && (size_t)fs->cfg->max_nodes < t->max)
		t->max = (size_t)fs->cfg->max_nodes;
	t->root->fd = fs->root_fd;
	t->root->is_root = 1;
	atomic_store_explicit(&t->root->type, S_IFDIR, memory_order_relaxed);
	t->root->nlookup = 1;
	t->root->lname = strdup("");
	t->root->bname = strdup(".");
	t->root->generation = 0;
	t->settle_wake_at = INT64_MAX;
	{
		struct stat st;
		if (fstat(fs->root_fd, &st) == 0)
			t->root->ino = (uint64_t)st.st_ino;
	}
	hash_in(t, t->root);
	fs->nodes = t;
	return 0;
}

void fs_nodes_free(struct fs *fs)
{
	struct fs_nodes *t = fs->nodes;

	if (!t)
		return;
	for (size_t i = 0; i < t->size; i++) {
		while (t->table[i]) {
			struct fs_node *n = t->table[i];
			t->table[i] = n->hnext;
			if (n != t->root && n->fd >= 0)
				close(n->fd);
			free(n->lname);
			free(n->bname);
			free(n->ready); /* its files go with work/ at the next mount */
			fs_check_put(n->check);
			free(n);
		}
	}
	/* nodes taken out of the table (gone) but still held are leaked by
	 * no one: holders release them before this runs */
	while (t->notices) {
		struct notice *x = t->notices;
		t->notices = x->next;
		free(x->name);
		free(x);
	}
	close(t->dead_fd);
	fs_mutex_destroy(&t->lock);
	fs_mutex_destroy(&t->notify_lock);
	pthread_cond_destroy(&t->settle_cond);
	pthread_cond_destroy(&t->notify_cond);
	free(t->table);
	free(t);
	fs->nodes = NULL;
}

void fs_nodes_stats(struct fs *fs, struct fs_nodes_stats *s)
{
	struct fs_nodes *t = fs->nodes;

	memset(s, 0, sizeof(*s));
	fs_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->size; i++) {
		for (struct fs_node *n = t->table[i]; n; n = n->hnext) {
			s->nodes++;
			s->looked_up += n->nlookup > 0;
			s->with_fd += n->fd >= 0;
		}
	}
	s->lru = t->nlru;
	s->max = t->max;
	fs_mutex_unlock(&t->lock);
	fs_mutex_lock(&t->notify_lock);
	for (struct notice *x = t->notices; x; x = x->next)
		s->notices++;
	fs_mutex_unlock(&t->notify_lock);
}

struct fs_node *fs_node_root(struct fs *fs)
{
	return fs->nodes->root;
}

fuse_ino_t fs_node_id(const struct fs_node *n)
{
	return n->is_root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

struct fs_node *fs_node_of(struct fs *fs, fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? fs->nodes->root : (struct fs_node *)(uintptr_t)ino;
}

uint64_t fs_node_generation(const struct fs_node *n)
{
	return n->generation;
}

/* Set n's names (copies; NULL for none). Caller holds the lock. */
static int set_names(struct fs_node *n, const char *lname, const char *bname)
{
	char *l = lname ? strdup(lname) : NULL, *b = bname ? strdup(bname) : NULL;

	if ((lname && !l) || (bname && !b)) {
		free(l);
		free(b);
		return -ENOMEM;
	}
	free(n->lname);
	free(n->bname);
	n->lname = l;
	n->bname = b;
	return 0;
}

/* Make parent n's directory (holding it); caller holds the lock. */
static void set_parent(struct fs_node *n, struct fs_node *parent, struct fs_node **drop)
{
	*drop = NULL;
	if (n->parent == parent)
		return;
	if (parent)
		parent->refs++;
	*drop = n->parent;
	n->parent = parent;
}

int fs_node_lookup(struct fs *fs, struct fs_node *parent, const struct fs_found *f,
		   struct fs_node **out)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n, *drop = NULL;
	int fds[UNREF_FDS], nfds = 0, fd = -1, need;
	struct stat st;

	/* its O_PATH fd is opened outside the lock, when it has none yet (or
	 * its file went: the inode number is another file's now) */
	fs_mutex_lock(&t->lock);
	n = find(t, (uint64_t)f->st.st_ino, f->kind);
	need = !n || n->fd < 0 || n->gone;
	fs_mutex_unlock(&t->lock);
	if (need) {
		fd = openat(fs_node_fd(parent), f->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (fstat(fd, &st) == -1 || st.st_ino != f->st.st_ino) {
			close(fd);
			return -ESTALE; /* replaced meanwhile: the kernel asks again */
		}
	}
	fs_mutex_lock(&t->lock);
	n = find(t, (uint64_t)f->st.st_ino, f->kind);
	if (!n) {
		n = calloc(1, sizeof(*n));
		if (!n) {
			fs_mutex_unlock(&t->lock);
			if (fd >= 0)
				close(fd);
			return -ENOMEM;
		}
		n->ino = (uint64_t)f->st.st_ino;
		n->kind = f->kind;
		n->fd = -1;
		n->generation = atomic_fetch_add(&node_generation, 1) + 1;
		atomic_store(&n->gen, next_gen());
		hash_in(t, n);
	}
	if (n->gone) {
		/* an inode number reused since the node's file went: it is
		 * this file now, with nothing of the old one's state */
		struct fs_check *c = n->check;
		n->check = NULL;
		if (fd >= 0)
			set_fd(t, n, fd);
		fd = -1;
		n->gone = 0;
		n->dirty = 0;
		atomic_store(&n->gen, next_gen());
		fs_check_put(c);
	} else if (n->fd < 0 && fd >= 0) {
		n->fd = fd;
		fd = -1;
	}
	atomic_store_explicit(&n->type, f->st.st_mode & S_IFMT, memory_order_relaxed);
	n->kind = f->kind;
	n->view_bytes = f->view_bytes;
	if (set_names(n, f->lname, f->name) == 0)
		set_parent(n, parent, &drop);
	n->nlookup++;
	lru_place(t, n);
	lru_trim(fs, t);
	*out = n;
	if (drop)
		unref(fs, t, drop, fds, &nfds, UNREF_FDS);
	fs_mutex_unlock(&t->lock);
	close_all(fds, nfds);
	if (fd >= 0)
		close(fd);
	return 0;
}

void fs_node_forget(struct fs *fs, struct fs_node *n, uint64_t nlookup)
{
	struct fs_nodes *t = fs->nodes;
	int fds[UNREF_FDS], nfds = 0;

	if (n == t->root)
		return;
	fs_mutex_lock(&t->lock);
	node_assert(nlookup <= n->nlookup, n, "the kernel forgets more lookups than it was given");
	n->nlookup = nlookup > n->nlookup ? 0 : n->nlookup - nlookup;
	if (n->nlookup == 0) {
		/* unref takes one reference: lend it the kernel's */
		n->refs++;
		unref(fs, t, n, fds, &nfds, UNREF_FDS);
	}
	fs_mutex_unlock(&t->lock);
	close_all(fds, nfds);
}

/* fs_node_get with the lock held. */
static struct fs_node *get_locked(struct fs_nodes *t, uint64_t ino)
{
	struct fs_node *n = find(t, ino, FS_KIND_PLAIN);

	if (n) {
		n->refs++;
		lru_out(t, n);
	} else if ((n = calloc(1, sizeof(*n)))) {
		n->ino = ino;
		n->kind = FS_KIND_PLAIN;
		atomic_store_explicit(&n->type, S_IFREG, memory_order_relaxed);
		n->fd = -1;
		n->refs = 1;
		n->generation = atomic_fetch_add(&node_generation, 1) + 1;
		atomic_store(&n->gen, next_gen());
		hash_in(t, n);
	}
	return n;
}

struct fs_node *fs_node_get(struct fs *fs, uint64_t ino)
{
	struct fs_node *n;

	fs_mutex_lock(&fs->nodes->lock);
	n = get_locked(fs->nodes, ino);
	fs_mutex_unlock(&fs->nodes->lock);
	return n;
}

struct fs_node *fs_node_claim(struct fs *fs, uint64_t ino, uint64_t *gen, int *busy)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n;

	fs_mutex_lock(&t->lock);
	n = find(t, ino, FS_KIND_PLAIN);
	*busy = n && (n->opens > 0 || n->dirty || n->settling || n->due_next ||
		      n->job_gen == atomic_load(&n->gen));
	n = *busy ? NULL : get_locked(t, ino);
	if (n) {
		*gen = atomic_load(&n->gen);
		n->job_gen = *gen;
	}
	fs_mutex_unlock(&t->lock);
	return n;
}

struct fs_node *fs_node_find(struct fs *fs, uint64_t ino)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n;

	fs_mutex_lock(&t->lock);
	n = find(t, ino, FS_KIND_PLAIN);
	if (n) {
		n->refs++;
		lru_out(t, n);
	}
	fs_mutex_unlock(&t->lock);
	return n;
}

void fs_node_hold(struct fs *fs, struct fs_node *n)
{
	fs_mutex_lock(&fs->nodes->lock);
	n->refs++;
	lru_out(fs->nodes, n);
	fs_mutex_unlock(&fs->nodes->lock);
}

void fs_node_put(struct fs *fs, struct fs_node *n)
{
	struct fs_nodes *t = fs->nodes;
	int fds[UNREF_FDS], nfds = 0;

	if (!n)
		return;
	fs_mutex_lock(&t->lock);
	unref(fs, t, n, fds, &nfds, UNREF_FDS);
	fs_mutex_unlock(&t->lock);
	close_all(fds, nfds);
}

int fs_node_fd(const struct fs_node *n)
{
	return n->fd;
}

void fs_node_file(struct fs *fs, struct fs_node *n, struct fs_node_file *f)
{
	fs_mutex_lock(&fs->nodes->lock);
	f->ino = n->ino;
	f->kind = n->kind;
	f->view_bytes = n->view_bytes;
	fs_mutex_unlock(&fs->nodes->lock);
}

uint64_t fs_node_ino(struct fs *fs, struct fs_node *n)
{
	struct fs_node_file f;

	fs_node_file(fs, n, &f);
	return f.ino;
}

enum fs_kind fs_node_kind(struct fs *fs, struct fs_node *n)
{
	struct fs_node_file f;

	fs_node_file(fs, n, &f);
	return f.kind;
}

/* Tries before giving up on a file that keeps being replaced. */
#define REOPEN_TRIES 8

int fs_node_reopen(struct fs *fs, struct fs_node *n, int flags, struct fs_node_file *f)
{
	char proc[FS_PROC_FD_BUF];
	struct stat st;

	flags = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW)) | O_CLOEXEC;
	for (int i = 0; i < REOPEN_TRIES; i++) {
		int fd;
		fs_node_file(fs, n, f);
		/* the magic link is the inode itself: following it cannot
		 * leave BACKING */
		fd = open(fs_proc_fd(n->fd, proc), flags);
		if (fd < 0)
			return -errno;
		if (fstat(fd, &st) == -1) {
			int rc = -errno;
			close(fd);
			return rc;
		}
		if ((uint64_t)st.st_ino == f->ino)
			return fd;
		/* replaced between the look and the open: look again */
		close(fd);
	}
	return -EAGAIN;
}

mode_t fs_node_type(const struct fs_node *n)
{
	return (mode_t)atomic_load_explicit(&n->type, memory_order_relaxed);
}

int fs_node_path(struct fs *fs, struct fs_node *n, char *buf, size_t size)
{
	struct fs_nodes *t = fs->nodes;
	size_t len = 0;
	int rc = 0;

	fs_mutex_lock(&t->lock);
	/* the names from n up, written from the end of buf backwards */
	buf[size - 1] = '\0';
	len = 0;
	for (struct fs_node *p = n; p != t->root; p = p->parent) {
		size_t l;
		if (!p->parent || !p->lname) {
			rc = -ENOENT;
			goto out;
		}
		l = strlen(p->lname);
		if (len + l + (len ? 1 : 0) + 1 > size) {
			rc = -ENAMETOOLONG;
			goto out;
		}
		if (len)
			buf[size - 2 - len++] = '/';
		memcpy(buf + size - 1 - len - l, p->lname, l);
		len += l;
	}
	memmove(buf, buf + size - 1 - len, len);
	buf[len] = '\0';
out:
	fs_mutex_unlock(&t->lock);
	return rc;
}

int fs_node_at(struct fs *fs, struct fs_node *n, int *dirfd, char *name, size_t size)
{
	struct fs_nodes *t = fs->nodes;
	int rc = 0;

	fs_mutex_lock(&t->lock);
	if (!n->parent || !n->bname || n->parent->fd < 0) {
		rc = -ENOENT;
	} else if ((size_t)snprintf(name, size, "%s", n->bname) >= size) {
		rc = -ENAMETOOLONG;
	} else {
		*dirfd = fcntl(n->parent->fd, F_DUPFD_CLOEXEC, 0);
		rc = *dirfd < 0 ? -errno : 0;
	}
	fs_mutex_unlock(&t->lock);
	return rc;
}

int fs_node_stat(struct fs *fs, struct fs_node *n, struct stat *st)
{
	for (int i = 0; i < REOPEN_TRIES; i++) {
		struct fs_node_file f;
		int gone;

		fs_mutex_lock(&fs->nodes->lock);
		gone = n->gone && n->opens == 0;
		f.ino = n->ino;
		f.kind = n->kind;
		f.view_bytes = n->view_bytes;
		fs_mutex_unlock(&fs->nodes->lock);
		if (gone)
			return -ENOENT;
		if (fstatat(n->fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1)
			return -errno;
		/* replaced meanwhile (a commit): the size shown is the new
		 * file's, so look again */
		if ((uint64_t)st->st_ino != f.ino && fs_node_type(n) == S_IFREG)
			continue;
		if (f.kind == FS_KIND_VIEW || f.kind == FS_KIND_SIBLING) {
			st->st_size = (off_t)f.view_bytes;
			if (f.kind == FS_KIND_SIBLING) {
				/* read-only, its own inode number (the HEIF's with a
				 * high bit: never a backing inode of a file) */
				st->st_mode &= ~(mode_t)0222;
				st->st_ino |= 1ull << 63;
				st->st_nlink = 1;
			}
		}
		return 0;
	}
	return -EAGAIN;
}

void fs_node_moved(struct fs *fs, struct fs_node *n, struct fs_node *parent, const char *lname,
		   const char *bname)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *drop = NULL;
	int fds[UNREF_FDS], nfds = 0;

	fs_mutex_lock(&t->lock);
	if (set_names(n, lname, bname) == 0)
		set_parent(n, parent, &drop);
	if (drop)
		unref(fs, t, drop, fds, &nfds, UNREF_FDS);
	fs_mutex_unlock(&t->lock);
	close_all(fds, nfds);
}

void fs_node_unnamed(struct fs *fs, struct fs_node *n, int last)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *drop = NULL;
	int fds[UNREF_FDS], nfds = 0;

	fs_mutex_lock(&t->lock);
	if (last) {
		free(n->lname);
		free(n->bname);
		n->lname = n->bname = NULL;
		set_parent(n, NULL, &drop);
		atomic_store(&n->cancel, 1);
		atomic_fetch_add(&n->gen, 1);
		n->dirty = 0;
		n->gone = 1;
		/* nothing open: its space is freed now, not when the kernel
		 * forgets the node */
		if (n->opens == 0)
			set_fd(t, n, -1);
	}
	if (drop)
		unref(fs, t, drop, fds, &nfds, UNREF_FDS);
	fs_mutex_unlock(&t->lock);
	close_all(fds, nfds);
}

void fs_node_replaced(struct fs *fs, uint64_t ino, uint64_t new_ino, int dirfd, const char *bname,
		      enum fs_kind kind, uint64_t view_bytes, int in_request)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n, *m;
	struct fs_check *c = NULL;
	int fd = openat(dirfd, bname, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	fuse_ino_t id = 0;

	fs_mutex_lock(&t->lock);
	n = find(t, ino, FS_KIND_PLAIN);
	if (!n)
		n = find(t, ino, FS_KIND_VIEW);
	if (n && (m = find(t, new_ino, kind)) && m != n) {
		/* another node of that number: a stale one (its file gone, the
		 * number reused) or a lookup of the new file meanwhile. n
		 * stands for the new file from now on (the kernel's entry for
		 * the name is n); m keeps its own descriptor, found no more */
		hash_out(t, m);
	}
	if (n) {
		/* the old file's handles keep their check; new ones get the
		 * new file's */
		c = n->check;
		n->check = NULL;
		hash_out(t, n);
		n->ino = new_ino;
		n->kind = kind;
		n->view_bytes = view_bytes;
		if (n->bname) {
			free(n->bname);
			n->bname = strdup(bname);
		}
		hash_in(t, n);
		set_fd(t, n, fd);
		fd = -1;
		id = n->nlookup ? fs_node_id(n) : 0;
	}
	fs_mutex_unlock(&t->lock);
	fs_check_put(c);
	if (fd >= 0)
		close(fd);
	if (id && !in_request)
		notice_add(t, NOTICE_INODE, id, NULL);
}

void fs_notify_ino(struct fs *fs, uint64_t ino)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n;
	fuse_ino_t id = 0;

	fs_mutex_lock(&t->lock);
	n = find(t, ino, FS_KIND_PLAIN);
	if (!n)
		n = find(t, ino, FS_KIND_VIEW);
	if (n && n->nlookup)
		id = fs_node_id(n);
	fs_mutex_unlock(&t->lock);
	if (id)
		notice_add(t, NOTICE_INODE, id, NULL);
}

void fs_notify_name(struct fs *fs, const char *dir, const char *name)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_found f;
	struct fs_node *n;
	int d;
	fuse_ino_t id = 0;

	/* the directory's node, by its backing inode */
	d = fs_open_path(fs, dir, O_PATH | O_DIRECTORY, 0);
	if (d < 0)
		return;
	if (fstat(d, &f.st) == 0) {
		fs_mutex_lock(&t->lock);
		n = find(t, (uint64_t)f.st.st_ino, FS_KIND_PLAIN);
		if (n && (n->nlookup || n == t->root))
			id = fs_node_id(n);
		fs_mutex_unlock(&t->lock);
	}
	close(d);
	if (id)
		notice_add(t, NOTICE_NAME, id, strdup(name));
}

/* The notify thread: the kernel is told from here, never from inside a
 * request (it may hold the locks the invalidation waits for). */
static void *notify_main(void *arg)
{
	struct fs *fs = arg;
	struct fs_nodes *t = fs->nodes;

	fs_mutex_lock(&t->notify_lock);
	while (!t->notify_stop) {
		struct notice *x = t->notices;
		if (!x) {
			fs_cond_wait(&t->notify_cond, &t->notify_lock);
			continue;
		}
		t->notices = x->next;
		if (!t->notices)
			t->notices_tail = NULL;
		fs_mutex_unlock(&t->notify_lock);
		/* -ENOENT: the kernel had forgotten it already */
		if (x->what == NOTICE_INODE)
			fuse_lowlevel_notify_inval_inode(fs->se, x->ino, 0, 0);
		else if (x->name)
			fuse_lowlevel_notify_inval_entry(fs->se, x->ino, x->name, strlen(x->name));
		free(x->name);
		free(x);
		fs_mutex_lock(&t->notify_lock);
	}
	fs_mutex_unlock(&t->notify_lock);
	return NULL;
}

/* ---- the bytes: generations, writers, settling -------------------------- */

/* Put n on the settle list (t->lock held): its bytes changed and no writer
 * has it open. */
static void settle_start(struct fs *fs, struct fs_nodes *t, struct fs_node *n)
{
	n->settle_at = fs_now_ms() + fs->cfg->settle_ms;
	if (n->writers == 0 && n->dirty && !n->gone && !n->settling &&
	    !atomic_load(&fs->stopping)) {
		n->settling = 1;
		n->refs++;
		n->settle_next = t->settle;
		t->settle = n;
		/* the thread looks when it planned to, and that is soon enough
		 * unless this node is due earlier */
		if (n->settle_at < t->settle_wake_at) {
			t->settle_kick = 1;
			pthread_cond_signal(&t->settle_cond);
		}
	}
}

void fs_node_changed(struct fs *fs, struct fs_node *n)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_check *c;

	fs_mutex_lock(&t->lock);
	atomic_store(&n->gen, next_gen());
	atomic_store(&n->cancel, 1);
	n->dirty = 1;
	c = n->check;
	n->check = NULL;
	settle_start(fs, t, n);
	fs_mutex_unlock(&t->lock);
	/* its bytes changed: they are checked again once settled */
	fs_check_stop(c);
	fs_check_put(c);
}

void fs_node_touch(struct fs *fs, struct fs_node *n)
{
	fs_mutex_lock(&fs->nodes->lock);
	atomic_store(&n->gen, next_gen());
	atomic_store(&n->cancel, 1);
	n->dirty = 1;
	fs_mutex_unlock(&fs->nodes->lock);
}

void fs_node_opened(struct fs *fs, struct fs_node *n, int writable)
{
	struct fs_check *c = NULL;

	fs_mutex_lock(&fs->nodes->lock);
	n->refs++;
	lru_out(fs->nodes, n);
	n->opens++;
	if (writable) {
		n->writers++;
		c = n->check;
		n->check = NULL;
	}
	fs_mutex_unlock(&fs->nodes->lock);
	/* its bytes may change from now on: they are checked once settled */
	fs_check_stop(c);
	fs_check_put(c);
}

void fs_node_closed(struct fs *fs, struct fs_node *n, int writable)
{
	struct fs_nodes *t = fs->nodes;
	int fds[UNREF_FDS], nfds = 0, requeue = 0;
	uint64_t gen = 0;

	fs_mutex_lock(&t->lock);
	n->opens--;
	if (writable) {
		n->writers--;
		settle_start(fs, t, n);
	}
	if (n->opens == 0 && n->gone)
		set_fd(t, n, -1); /* its space is freed with its last handle */
	if (n->opens == 0 && n->commit_waits) {
		n->commit_waits = 0;
		/* written meanwhile: settling queues it; gone: nothing to do */
		requeue = !n->gone && !n->dirty && n->writers == 0 && !atomic_load(&fs->stopping);
		gen = atomic_load(&n->gen);
		if (requeue) {
			n->refs++; /* for the push below */
			n->job_gen = gen;
		}
	}
	unref(fs, t, n, fds, &nfds, UNREF_FDS); /* the handle's */
	fs_mutex_unlock(&t->lock);
	close_all(fds, nfds);
	if (requeue) {
		fs_job_push(fs, n->ino, gen, n);
		fs_node_put(fs, n);
	}
}

int fs_node_is_open(struct fs *fs, uint64_t ino)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n;
	int open;

	fs_mutex_lock(&t->lock);
	n = find(t, ino, FS_KIND_PLAIN);
	if (!n)
		n = find(t, ino, FS_KIND_VIEW);
	open = n && n->opens > 0;
	fs_mutex_unlock(&t->lock);
	return open;
}

int fs_node_writing(struct fs *fs, struct fs_node *n)
{
	int w;

	fs_mutex_lock(&fs->nodes->lock);
	w = n->writers > 0;
	fs_mutex_unlock(&fs->nodes->lock);
	return w;
}

void fs_node_gone(struct fs *fs, uint64_t ino)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *n;

	fs_mutex_lock(&t->lock);
	n = find(t, ino, FS_KIND_PLAIN);
	if (!n)
		n = find(t, ino, FS_KIND_VIEW);
	if (n) {
		atomic_store(&n->cancel, 1);
		atomic_fetch_add(&n->gen, 1);
		n->dirty = 0;
		n->gone = 1;
		if (n->opens == 0)
			set_fd(t, n, -1);
	}
	fs_mutex_unlock(&t->lock);
}

uint64_t fs_node_gen(struct fs_node *n)
{
	return atomic_load(&n->gen);
}

atomic_int *fs_node_cancel(struct fs_node *n)
{
	return &n->cancel;
}

int fs_node_current(struct fs *fs, struct fs_node *n, uint64_t gen)
{
	int ok;

	fs_mutex_lock(&fs->nodes->lock);
	ok = atomic_load(&n->gen) == gen;
	fs_mutex_unlock(&fs->nodes->lock);
	return ok;
}

void fs_node_set_gen(struct fs_node *n, uint64_t gen)
{
	atomic_store(&n->gen, gen);
}

/* Remove the files of ino's archive at gen from work/. */
static void ready_unlink(struct fs *fs, uint64_t ino, uint64_t gen)
{
	char name[FS_JOB_NAME_BUF];

	snprintf(name, sizeof(name), "%llu.%llu.out", (unsigned long long)ino,
		 (unsigned long long)gen);
	unlinkat(fs->work_fd, name, 0);
	snprintf(name, sizeof(name), "%llu.%llu.view", (unsigned long long)ino,
		 (unsigned long long)gen);
	unlinkat(fs->work_fd, name, 0);
}

int fs_node_defer_commit(struct fs *fs, struct fs_node *n, uint64_t gen,
			 const struct codec_result *res)
{
	struct ready *r = malloc(sizeof(*r)), *old = NULL;
	int open, kept = 0;

	if (r) {
		r->gen = gen;
		r->res = *res;
	}
	fs_mutex_lock(&fs->nodes->lock);
	open = n->opens > 0;
	if (open) {
		n->commit_waits = 1;
		old = n->ready;
		n->ready = r;
		kept = r != NULL;
		r = NULL;
	}
	fs_mutex_unlock(&fs->nodes->lock);
	if (old && old->gen != gen)
		ready_unlink(fs, n->ino, old->gen);
	free(old);
	free(r);
	/* with no memory for it the archive is made again at the last close */
	if (open && !kept)
		ready_unlink(fs, n->ino, gen);
	return open;
}

int fs_node_take_ready(struct fs *fs, struct fs_node *n, uint64_t gen, struct codec_result *res)
{
	struct ready *r;

	fs_mutex_lock(&fs->nodes->lock);
	r = n->ready;
	n->ready = NULL;
	fs_mutex_unlock(&fs->nodes->lock);
	if (!r)
		return 0;
	if (r->gen != gen) {
		ready_unlink(fs, n->ino, r->gen);
		free(r);
		return 0;
	}
	*res = r->res;
	free(r);
	return 1;
}

struct fs_check *fs_node_check_get(struct fs *fs, struct fs_node *n, uint64_t ino)
{
	struct fs_check *c = NULL;

	fs_mutex_lock(&fs->nodes->lock);
	if (n->check && n->check_ino == ino)
		c = fs_check_ref(n->check);
	fs_mutex_unlock(&fs->nodes->lock);
	return c;
}

struct fs_check *fs_node_check_set(struct fs *fs, struct fs_node *n, uint64_t ino,
				   struct fs_check *c)
{
	struct fs_check *old = NULL, *ret = NULL;

	fs_mutex_lock(&fs->nodes->lock);
	if (n->writers == 0) {
		if (n->check && n->check_ino == ino) {
			ret = fs_check_ref(n->check); /* another reader's came first */
		} else {
			old = n->check;
			n->check = fs_check_ref(c);
			n->check_ino = ino;
			ret = c;
			c = NULL;
		}
	}
	fs_mutex_unlock(&fs->nodes->lock);
	fs_check_put(old);
	fs_check_put(c);
	return ret;
}

void fs_nodes_cancel_all(struct fs *fs)
{
	struct fs_nodes *t = fs->nodes;

	fs_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->size; i++)
		for (struct fs_node *n = t->table[i]; n; n = n->hnext)
			atomic_store(&n->cancel, 1);
	fs_mutex_unlock(&t->lock);
}

int fs_mark_staged_in(struct idx_txn *txn, uint64_t ino, uint64_t size, const char *path)
{
	struct idx_entry e = {
	    .state = IDX_STAGED, .orig_bytes = size, .stored_bytes = size, .view_bytes = size};
	struct idx_entry old;
	int rc;

	/* an archive it replaced still waits for it to settle */
	if (idx_get(txn, ino, &old) == 0)
		e.prev = old.prev;
	while (*path == '/')
		path++;
	rc = idx_put(txn, ino, &e);
	if (!rc)
		rc = idx_blocks_del(txn, ino); /* digests come again when it settles */
	if (!rc)
		rc = idx_queue_put(txn, ino, 0, path);
	return rc;
}

int fs_mark_staged(struct fs *fs, uint64_t ino, uint64_t size, const char *path)
{
	struct idx_txn *txn;
	int rc = idx_begin(fs->idx, 1, &txn);

	if (rc)
		return rc;
	rc = fs_mark_staged_in(txn, ino, size, path);
	if (rc) {
		idx_abort(txn);
		return rc;
	}
	return idx_commit(txn);
}

/* Queue every settled node: one index transaction each. Called with the
 * lock held; releases and retakes it around the queueing. */
static void settle_due(struct fs *fs, int64_t now, int64_t *next)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *due = NULL, **pp = &t->settle;

	while (*pp) {
		struct fs_node *n = *pp;
		if (n->writers == 0 && n->settle_at <= now) {
			/* off the list: a close from now on may put it back (with
			 * its own reference) while it is queued from due */
			*pp = n->settle_next;
			n->settling = 0;
			n->settle_next = NULL;
			n->due_next = due;
			due = n;
		} else {
			if (n->writers == 0 && n->settle_at < *next)
				*next = n->settle_at;
			pp = &n->settle_next;
		}
	}
	if (!due)
		return; /* the lock stays held: no window for a kick */
	fs_mutex_unlock(&t->lock);
	while (due) {
		struct fs_node *n = due;
		uint64_t ino, gen;
		int dirty;
		fs_mutex_lock(&t->lock);
		due = n->due_next;
		n->due_next = NULL;
		/* opened for writing since it was taken off: its last close
		 * puts it back on the list, dirty still */
		dirty = n->dirty && !n->gone && n->writers == 0;
		ino = n->ino;
		gen = atomic_load(&n->gen);
		if (dirty) {
			n->dirty = 0;
			n->job_gen = gen; /* its job, made below */
		}
		fs_mutex_unlock(&t->lock);
		if (dirty)
			fs_job_push(fs, ino, gen, n);
		fs_node_put(fs, n); /* the settle list's reference */
	}
	fs_mutex_lock(&t->lock);
}

/* The settle thread: wakes when a node is due, or when one joins the list
 * that is due before the thread's planned look. */
static void *settle_main(void *arg)
{
	struct fs *fs = arg;
	struct fs_nodes *t = fs->nodes;

	fs_mutex_lock(&t->lock);
	while (!atomic_load(&fs->stopping)) {
		int64_t now = fs_now_ms(), next = now + 1000, wait;
		struct timespec ts;

		/* nodes that join while the look has the lock released are
		 * not in next: they kick, and the thread looks again */
		t->settle_wake_at = INT64_MAX;
		t->settle_kick = 0;
		settle_due(fs, now, &next);
		if (atomic_load(&fs->stopping))
			break;
		if (t->settle_kick)
			continue;
		/* each look walks the whole list: looking at most every
		 * SETTLE_TICK_MS keeps that walk off the write path's lock */
		now = fs_now_ms();
		if (next < now + SETTLE_TICK_MS)
			next = now + SETTLE_TICK_MS;
		t->settle_wake_at = next;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		wait = next - now;
		ts.tv_sec += wait / 1000;
		ts.tv_nsec += (wait % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		fs_cond_timedwait(&t->settle_cond, &t->lock, &ts);
	}
	fs_mutex_unlock(&t->lock);
	return NULL;
}

int fs_nodes_start(struct fs *fs)
{
	struct fs_nodes *t = fs->nodes;
	int rc = pthread_create(&t->settle_thread, NULL, settle_main, fs);

	if (rc)
		return -rc;
	rc = pthread_create(&t->notify_thread, NULL, notify_main, fs);
	if (rc) {
		atomic_store(&fs->stopping, 1);
		fs_mutex_lock(&t->lock);
		pthread_cond_signal(&t->settle_cond);
		fs_mutex_unlock(&t->lock);
		pthread_join(t->settle_thread, NULL);
		return -rc;
	}
	t->started = 1;
	return 0;
}

/* Stop settling (files still settling stay staged in the index and are
 * queued again by the next mount's recovery) and notifying. */
void fs_nodes_stop(struct fs *fs)
{
	struct fs_nodes *t = fs->nodes;
	struct fs_node *list;

	if (!t->started)
		return;
	fs_mutex_lock(&t->lock);
	atomic_store(&fs->stopping, 1);
	pthread_cond_signal(&t->settle_cond);
	fs_mutex_unlock(&t->lock);
	pthread_join(t->settle_thread, NULL);
	fs_mutex_lock(&t->notify_lock);
	t->notify_stop = 1;
	pthread_cond_signal(&t->notify_cond);
	fs_mutex_unlock(&t->notify_lock);
	pthread_join(t->notify_thread, NULL);
	fs_mutex_lock(&t->lock);
	list = t->settle;
	t->settle = NULL;
	for (struct fs_node *n = list; n; n = n->settle_next)
		n->settling = 0;
	fs_mutex_unlock(&t->lock);
	while (list) {
		struct fs_node *n = list;
		list = n->settle_next;
		fs_node_put(fs, n);
	}
	t->started = 0;
}
