/*
 * Unit tests of fs/ without a mount: the name mapping and safe resolution
 * (names.c), the node table (node.c), the one durable replace and its
 * recovery (commit.c), and the lock order (lock.c).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../fs/internal.h"
#include "check.h"

static char dir[64];
static struct fs_config cfg;
static struct fs fs;

/* Open dir/b/rel as an O_PATH directory. */
static int open_dir(const char *rel)
{
	char p[1000];
	int fd;

	snprintf(p, sizeof(p), "%s/b/%s", dir, rel);
	fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
	CHECK(fd >= 0);
	return fd;
}

/* A backing tree with its state and index, and a struct fs over it. */
static void setup(void)
{
	char p[1000];

	snprintf(p, sizeof(p),
		 "rm -rf %s/b && mkdir -p %s/b/.hevcfs/work %s/b/.hevcfs/prev %s/b/.hevcfs/cache "
		 "%s/b/sub",
		 dir, dir, dir, dir, dir);
	CHECK(system(p) == 0);
	fs_config_init(&cfg);
	memset(&fs, 0, sizeof(fs));
	fs.cfg = &cfg;
	fs.root_fd = open_dir(".");
	fs.meta_fd = open_dir(".hevcfs");
	fs.work_fd = open_dir(".hevcfs/work");
	fs.prev_fd = open_dir(".hevcfs/prev");
	fs.cache_fd = open_dir(".hevcfs/cache");
	snprintf(p, sizeof(p), "%s/b/.hevcfs/cache", dir);
	fs.cache_dir = strdup(p);
	snprintf(p, sizeof(p), "%s/b/.hevcfs/index", dir);
	CHECK_EQ(idx_open(p, 0, &fs.idx), 0);
	fs_mutex_init(&fs.ns_lock, FS_LOCK_NS, "ns");
	fs_mutex_init(&fs.jobs_lock, FS_LOCK_JOBS, "jobs");
	fs_mutex_init(&fs.render_lock, FS_LOCK_LEAF, "render");
	pthread_cond_init(&fs.render_cond, NULL);
	CHECK_EQ(fs_nodes_new(&fs), 0);
}

static void teardown(void)
{
	/* jobs queued (no workers run here) */
	while (fs.jobs_head) {
		struct job *j = fs.jobs_head;
		fs.jobs_head = j->next;
		fs_node_put(&fs, j->node);
		free(j);
	}
	fs.jobs_tail = NULL;
	fs_nodes_free(&fs);
	idx_close(fs.idx);
	close(fs.root_fd);
	close(fs.meta_fd);
	close(fs.work_fd);
	close(fs.prev_fd);
	close(fs.cache_fd);
	free(fs.cache_dir);
	free(fs.rendering);
	fs_mutex_destroy(&fs.ns_lock);
	fs_mutex_destroy(&fs.jobs_lock);
	fs_mutex_destroy(&fs.render_lock);
	pthread_cond_destroy(&fs.render_cond);
}

/* Create a backing file (rel below BACKING) holding data; its inode. */
static uint64_t mkfile_with(const char *rel, const char *data)
{
	char p[1000];
	struct stat st;
	int fd;

	snprintf(p, sizeof(p), "%s/b/%s", dir, rel);
	fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, data, strlen(data)) == (ssize_t)strlen(data));
	CHECK(fstat(fd, &st) == 0);
	close(fd);
	return st.st_ino;
}

static uint64_t mkfile(const char *rel)
{
	return mkfile_with(rel, "data");
}

static int exists(const char *rel)
{
	char p[1000];
	struct stat st;

	snprintf(p, sizeof(p), "%s/b/%s", dir, rel);
	return lstat(p, &st) == 0;
}

static uint64_t ino_of(const char *rel)
{
	char p[1000];
	struct stat st;

	snprintf(p, sizeof(p), "%s/b/%s", dir, rel);
	CHECK(lstat(p, &st) == 0);
	return st.st_ino;
}

static void put_entry(uint64_t ino, int state, const char *suffix, uint64_t view)
{
	struct idx_txn *t;
	struct idx_entry e = {.state = (uint32_t)state, .view_bytes = view};

	snprintf(e.suffix, sizeof(e.suffix), "%s", suffix);
	CHECK_EQ(idx_begin(fs.idx, 1, &t), 0);
	CHECK_EQ(idx_put(t, ino, &e), 0);
	CHECK_EQ(idx_commit(t), 0);
}

/* A staged file queued at generation gen under path. */
static void put_queued(uint64_t ino, uint64_t gen, const char *path)
{
	struct idx_txn *t;
	struct idx_entry e = {.state = IDX_PENDING, .gen = gen};

	CHECK_EQ(idx_begin(fs.idx, 1, &t), 0);
	CHECK_EQ(idx_put(t, ino, &e), 0);
	CHECK_EQ(idx_queue_put(t, ino, gen, path), 0);
	CHECK_EQ(idx_commit(t), 0);
}

static int has_entry(uint64_t ino, struct idx_entry *e)
{
	struct idx_entry tmp;

	return fs_entry_get(&fs, ino, e ? e : &tmp) == 0;
}

static int count_intents_cb(void *arg, const struct idx_intent *in)
{
	(void)in;
	(*(int *)arg)++;
	return 0;
}

static int count_intents(void)
{
	struct idx_txn *t;
	int n = 0;

	CHECK_EQ(idx_begin(fs.idx, 0, &t), 0);
	CHECK_EQ(idx_intent_each(t, count_intents_cb, &n), 0);
	idx_abort(t);
	return n;
}

/* ---- names.c ------------------------------------------------------------ */

static void test_reserved_names(void)
{
	CHECK(fs_path_reserved("/.hevcfs"));
	CHECK(fs_path_reserved(".hevcfs/index/data.mdb"));
	CHECK(!fs_path_reserved("/.hevcfsx"));
	CHECK(!fs_path_reserved("/sub/.hevcfs"));
	CHECK(!fs_path_reserved("/"));
	CHECK(fs_name_reserved(1, ".hevcfs"));
	CHECK(!fs_name_reserved(0, ".hevcfs"));
	CHECK(fs_has_archive_suffix("a.JPG.heic"));
	CHECK(fs_has_archive_suffix("clip.avi.mp4"));
	CHECK(!fs_has_archive_suffix(".heic"));
	CHECK(!fs_has_archive_suffix("IMG.HEIC"));
	CHECK(fs_name_ok("a"));
	CHECK(!fs_name_ok(""));
	CHECK(!fs_name_ok("."));
	CHECK(!fs_name_ok(".."));
	CHECK(!fs_name_ok("a/b"));
	CHECK(!strcmp(fs_basename("a/b/c"), "c"));
	CHECK(!strcmp(fs_basename("c"), "c"));
}

static void test_stored_names(void)
{
	char out[FS_STORED_BUF], name[300];

	CHECK_EQ(fs_stored_name("IMG.JPG", ".heic", out, sizeof(out)), 0);
	CHECK(!strcmp(out, "IMG.JPG.heic"));
	CHECK_EQ(fs_stored_name("clip.avi", ".mp4", out, sizeof(out)), 0);
	CHECK(!strcmp(out, "clip.avi.mp4"));
	/* a name that already says MP4 or MOV keeps it */
	CHECK_EQ(fs_stored_name("VID.MOV", ".mp4", out, sizeof(out)), 0);
	CHECK(!strcmp(out, "VID.MOV"));
	CHECK_EQ(fs_stored_name("v.m4v", ".mp4", out, sizeof(out)), 0);
	CHECK(!strcmp(out, "v.m4v"));
	CHECK_EQ(fs_stored_name("v.mkv", ".mkv", out, sizeof(out)), 0);
	CHECK(!strcmp(out, "v.mkv.mkv"));
	memset(name, 'n', 251);
	name[251] = '\0';
	CHECK_EQ(fs_stored_name(name, ".heic", out, sizeof(out)), -ENAMETOOLONG);
	name[250] = '\0';
	CHECK_EQ(fs_stored_name(name, ".heic", out, sizeof(out)), 0);
	CHECK_EQ(strlen(out), 255);
}

/* No name, symlink or ".." resolves outside BACKING. */
static void test_no_escape(void)
{
	char p[1000];
	const char *name;
	struct fs_found f;
	int fd, d;

	setup();
	snprintf(p, sizeof(p), "%s/b/up", dir);
	CHECK(symlink("/", p) == 0);
	snprintf(p, sizeof(p), "%s/b/sub/rel", dir);
	CHECK(symlink("../..", p) == 0);
	CHECK_EQ(fs_open_parent(&fs, "/up/etc/passwd", &name), -ELOOP);
	CHECK_EQ(fs_open_parent(&fs, "sub/rel/x", &name), -ELOOP);
	CHECK(fs_open_parent(&fs, "/sub/../../x", &name) < 0);
	CHECK(fs_open_path(&fs, "/up", O_RDONLY, 0) < 0);
	CHECK(fs_open_path(&fs, "/sub/rel", O_RDONLY | O_DIRECTORY, 0) < 0);
	fd = fs_open_parent(&fs, "/sub/x", &name);
	CHECK(fd >= 0);
	CHECK(!strcmp(name, "x"));
	close(fd);
	CHECK_EQ(fs_resolve_path(&fs, "/.hevcfs", &d, &f), -ENOENT);
	CHECK_EQ(fs_resolve_path(&fs, ".hevcfs/index", &d, &f), -ENOENT);
	/* a name is one component: the state directory is nobody's at the top,
	 * an ordinary name elsewhere */
	CHECK_EQ(fs_resolve(&fs, fs.root_fd, 1, ".hevcfs", &f), -ENOENT);
	CHECK_EQ(fs_resolve(&fs, fs.root_fd, 1, "sub/x", &f), -ENOENT);
	CHECK_EQ(fs_resolve(&fs, fs.root_fd, 1, "..", &f), -ENOENT);
	/* a symlink is resolved as itself, never followed */
	CHECK_EQ(fs_resolve(&fs, fs.root_fd, 1, "up", &f), 0);
	CHECK(S_ISLNK(f.st.st_mode));
	teardown();
}

static void test_archived_names_map(void)
{
	struct fs_found f;
	struct idx_txn *t;
	char buf[FS_NAME_BUF], longname[300];
	uint64_t a, k, v, h;
	int sub;

	setup();
	sub = open_dir("sub");
	a = mkfile("sub/IMG_1.JPG.heic");
	put_entry(a, IDX_ARCHIVED, ".heic", 123456);
	k = mkfile("sub/phone.heic"); /* a HEIC the user copied in: kept */
	put_entry(k, IDX_KEPT, "", 4);
	v = mkfile("sub/clip.MOV"); /* a video that kept its name */
	put_entry(v, IDX_ARCHIVED, "", 4);
	h = mkfile("sub/IMG_2.HEIC"); /* a phone's HEIC with a JPEG sibling */
	{
		struct idx_entry e = {.state = IDX_KEPT, .flags = IDX_F_SIBLING, .view_bytes = 777};
		CHECK_EQ(idx_begin(fs.idx, 1, &t), 0);
		CHECK_EQ(idx_put(t, h, &e), 0);
		CHECK_EQ(idx_commit(t), 0);
	}

	CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_1.JPG", &f), 0);
	CHECK_EQ(f.kind, FS_KIND_VIEW);
	CHECK(!strcmp(f.name, "IMG_1.JPG.heic") && !strcmp(f.lname, "IMG_1.JPG"));
	CHECK_EQ(f.view_bytes, 123456);
	CHECK_EQ(f.st.st_ino, a);
	/* an archived copy answers only to its logical name */
	CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_1.JPG.heic", &f), -ENOENT);
	CHECK_EQ(fs_resolve(&fs, sub, 0, "phone.heic", &f), 0);
	CHECK_EQ(f.kind, FS_KIND_PLAIN);
	CHECK_EQ(fs_resolve(&fs, sub, 0, "phone", &f), -ENOENT);
	/* a video that kept its name reads its own (stored) bytes: nothing to
	 * map, so the hot path does not even look it up */
	CHECK_EQ(fs_resolve(&fs, sub, 0, "clip.MOV", &f), 0);
	CHECK(!f.has_entry && f.kind == FS_KIND_PLAIN);
	/* siblings only with heic_view=jpeg */
	CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_2.HEIC.jpg", &f), -ENOENT);
	cfg.heic_view = 1;
	CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_2.HEIC.jpg", &f), 0);
	CHECK_EQ(f.kind, FS_KIND_SIBLING);
	CHECK_EQ(f.view_bytes, 777);
	CHECK(!strcmp(f.name, "IMG_2.HEIC"));
	CHECK_EQ(fs_resolve(&fs, sub, 0, "phone.heic.jpg", &f), -ENOENT);

	CHECK_EQ(idx_begin(fs.idx, 0, &t), 0);
	CHECK(!strcmp(fs_list_name(&fs, t, sub, 0, "IMG_1.JPG.heic", a, DT_REG, buf, sizeof(buf)),
		      "IMG_1.JPG"));
	CHECK(!strcmp(fs_list_name(&fs, t, sub, 0, "phone.heic", k, DT_REG, buf, sizeof(buf)),
		      "phone.heic"));
	CHECK(fs_list_name(&fs, t, sub, 1, ".hevcfs", 1, DT_DIR, buf, sizeof(buf)) == NULL);
	{
		struct idx_entry e;
		CHECK_EQ(idx_get(t, h, &e), 0);
		CHECK(!strcmp(fs_sibling_name(&fs, sub, "IMG_2.HEIC", &e, buf, sizeof(buf)),
			      "IMG_2.HEIC.jpg"));
		CHECK_EQ(idx_get(t, k, &e), 0);
		CHECK(fs_sibling_name(&fs, sub, "phone.heic", &e, buf, sizeof(buf)) == NULL);
		/* a file of the sibling's name is shown instead of it */
		CHECK_EQ(idx_get(t, h, &e), 0);
		int s2 = openat(sub, "IMG_2.HEIC.jpg", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
		CHECK(s2 >= 0);
		close(s2);
		CHECK(fs_sibling_name(&fs, sub, "IMG_2.HEIC", &e, buf, sizeof(buf)) == NULL);
		CHECK_EQ(unlinkat(sub, "IMG_2.HEIC.jpg", 0), 0);
	}
	/* a file with an archived copy's logical name (a tree made through the
	 * native view): each is listed and found under a name of its own */
	{
		int p1 = openat(sub, "IMG_1.JPG", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
		CHECK(p1 >= 0);
		close(p1);
		CHECK(!strcmp(
		    fs_list_name(&fs, t, sub, 0, "IMG_1.JPG.heic", a, DT_REG, buf, sizeof(buf)),
		    "IMG_1.JPG.heic"));
		CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_1.JPG.heic", &f), 0);
		CHECK(f.kind == FS_KIND_PLAIN && f.st.st_ino == a);
		CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_1.JPG", &f), 0);
		CHECK(f.kind == FS_KIND_PLAIN && f.st.st_ino != a && !strcmp(f.name, "IMG_1.JPG"));
		CHECK_EQ(unlinkat(sub, "IMG_1.JPG", 0), 0);
		CHECK(!strcmp(
		    fs_list_name(&fs, t, sub, 0, "IMG_1.JPG.heic", a, DT_REG, buf, sizeof(buf)),
		    "IMG_1.JPG"));
	}
	cfg.view = FS_VIEW_NATIVE;
	CHECK(!strcmp(fs_list_name(&fs, t, sub, 0, "IMG_1.JPG.heic", a, DT_REG, buf, sizeof(buf)),
		      "IMG_1.JPG.heic"));
	idx_abort(t);
	CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_1.JPG", &f), -ENOENT);
	CHECK_EQ(fs_resolve(&fs, sub, 0, "IMG_1.JPG.heic", &f), 0);
	CHECK_EQ(f.kind, FS_KIND_PLAIN);
	cfg.view = FS_VIEW_LEGACY;
	cfg.heic_view = 0;

	/* names at the limit */
	memset(longname, 'L', 255);
	longname[255] = '\0';
	{
		char rel[320] = "sub/";
		memcpy(rel + 4, longname, 256);
		mkfile(rel);
	}
	CHECK_EQ(fs_resolve(&fs, sub, 0, longname, &f), 0);
	memset(longname, 'L', 256);
	longname[256] = '\0';
	CHECK_EQ(fs_resolve(&fs, sub, 0, longname, &f), -ENAMETOOLONG);
	close(sub);
	teardown();
}

/* ---- node.c ------------------------------------------------------------- */

/* Look name up in the directory node p, as the kernel would. */
static struct fs_node *lookup(struct fs_node *p, const char *name)
{
	struct fs_found f;
	struct fs_node *n;

	CHECK_EQ(fs_resolve(&fs, fs_node_fd(p), p == fs_node_root(&fs), name, &f), 0);
	CHECK_EQ(fs_node_lookup(&fs, p, &f, &n), 0);
	return n;
}

static void test_nodes_lookup_forget(void)
{
	struct fs_node *root, *sub, *n, *m;
	struct fs_nodes_stats s;
	struct stat st;
	char path[FS_PATH_MAX], name[FS_STORED_BUF];
	uint64_t a;
	int d;

	setup();
	root = fs_node_root(&fs);
	CHECK_EQ(fs_node_id(root), FUSE_ROOT_ID);
	a = mkfile("sub/a");
	sub = lookup(root, "sub");
	n = lookup(sub, "a");
	CHECK(fs_node_of(&fs, fs_node_id(n)) == n);
	CHECK_EQ(fs_node_ino(&fs, n), a);
	CHECK(fs_node_fd(n) >= 0);
	CHECK_EQ(fs_node_stat(&fs, n, &st), 0);
	CHECK_EQ(st.st_ino, a);
	CHECK_EQ(fs_node_path(&fs, n, path, sizeof(path)), 0);
	CHECK(!strcmp(path, "sub/a"));
	CHECK_EQ(fs_node_at(&fs, n, &d, name, sizeof(name)), 0);
	CHECK(!strcmp(name, "a"));
	close(d);
	/* a second lookup is the same node */
	m = lookup(sub, "a");
	CHECK(m == n);
	/* renamed: its path follows */
	fs_node_moved(&fs, n, root, "b", "b");
	CHECK_EQ(fs_node_path(&fs, n, path, sizeof(path)), 0);
	CHECK(!strcmp(path, "b"));
	/* forgotten as often as looked up: gone from the table */
	fs_node_forget(&fs, n, 1);
	m = fs_node_find(&fs, a);
	CHECK(m == n);
	fs_node_put(&fs, m);
	fs_node_forget(&fs, n, 1);
	CHECK(fs_node_find(&fs, a) == NULL);
	fs_nodes_stats(&fs, &s);
	CHECK_EQ(s.nodes, 2); /* the root and sub */
	fs_node_forget(&fs, sub, 1);
	fs_nodes_stats(&fs, &s);
	CHECK_EQ(s.nodes, 1);
	teardown();
}

/* Past max_nodes looked-up nodes that nobody holds, the oldest names are
 * handed to the kernel to forget; held ones are never among them. */
static void test_nodes_lru(void)
{
	struct fs_node *sub, *held = NULL;
	struct fs_nodes_stats s;
	char name[32];

	setup();
	fs_nodes_free(&fs);
	cfg.max_nodes = 16;
	CHECK_EQ(fs_nodes_new(&fs), 0);
	sub = lookup(fs_node_root(&fs), "sub");
	for (int i = 0; i < 100; i++) {
		struct fs_node *n;
		snprintf(name, sizeof(name), "sub/f%d", i);
		mkfile(name);
		n = lookup(sub, name + 4);
		if (i == 0) {
			held = n;
			fs_node_hold(&fs, held);
		}
	}
	fs_nodes_stats(&fs, &s);
	CHECK_EQ(s.max, 16);
	CHECK(s.lru <= 16);
	/* the held node and sub (a parent) are never on the LRU; every node
	 * trimmed from it has a notice for the kernel */
	CHECK(s.notices >= 100 - 1 - 16);
	CHECK_EQ(s.nodes, s.looked_up);
	fs_node_put(&fs, held);
	cfg.max_nodes = 0;
	teardown();
}

static void test_node_generations(void)
{
	struct fs_node *n, *m;
	struct codec_result r = {.archived = 1, .stored_bytes = 9}, back;
	uint64_t g0, g1;

	setup();
	n = fs_node_get(&fs, 77);
	g0 = fs_node_gen(n);
	CHECK(fs_node_current(&fs, n, g0));
	fs_node_touch(&fs, n);
	g1 = fs_node_gen(n);
	CHECK(g1 > g0);
	CHECK_EQ(atomic_load(fs_node_cancel(n)), 1);
	CHECK(!fs_node_current(&fs, n, g0));
	m = fs_node_find(&fs, 77);
	CHECK(m == n);
	CHECK(fs_node_find(&fs, 78) == NULL);
	fs_node_put(&fs, m);
	/* a writer that wrote nothing changes nothing (its commit waits for
	 * its close); its first write makes the job stale */
	fs_node_opened(&fs, n, 1);
	CHECK(fs_node_current(&fs, n, g1));
	CHECK(fs_node_writing(&fs, n));
	CHECK(fs_node_is_open(&fs, 77));
	CHECK_EQ(fs_node_defer_commit(&fs, n, g1, &r), 1);
	CHECK_EQ(fs_node_take_ready(&fs, n, g1, &back), 1);
	fs_node_touch(&fs, n);
	CHECK(!fs_node_current(&fs, n, g1));
	g1 = fs_node_gen(n);
	fs_node_closed(&fs, n, 1);
	CHECK(fs_node_current(&fs, n, g1));
	/* an archive waits for the last reader's close, then is taken back */
	CHECK_EQ(fs_node_defer_commit(&fs, n, g1, &r), 0); /* nobody has it open */
	fs_node_opened(&fs, n, 0);
	CHECK_EQ(fs_node_defer_commit(&fs, n, g1, &r), 1);
	CHECK_EQ(fs_node_take_ready(&fs, n, g1 + 1, &back), 0); /* another generation */
	CHECK_EQ(fs_node_defer_commit(&fs, n, g1, &r), 1);
	CHECK_EQ(fs_node_take_ready(&fs, n, g1, &back), 1);
	CHECK_EQ(back.stored_bytes, 9);
	CHECK_EQ(fs_node_take_ready(&fs, n, g1, &back), 0);
	fs_node_closed(&fs, n, 0);
	fs_node_put(&fs, n);
	/* written and closed: the settle list holds it until it is queued */
	m = fs_node_find(&fs, 77);
	CHECK(m == n);
	fs_node_put(&fs, m);
	teardown();
}

/* Changed by path (mknod, truncate(2) by name): a new generation, the job
 * cancelled, and the node settles (the settle list holds it) unless a
 * writer has it open. */
static void test_node_changed_by_path(void)
{
	struct fs_node *n, *m;
	uint64_t g0;

	setup();
	n = fs_node_get(&fs, 91);
	g0 = fs_node_gen(n);
	fs_node_changed(&fs, n);
	CHECK(fs_node_gen(n) > g0);
	CHECK_EQ(atomic_load(fs_node_cancel(n)), 1);
	CHECK(!fs_node_writing(&fs, n));
	CHECK(!fs_node_is_open(&fs, 91));
	fs_node_put(&fs, n);
	/* the settle list's reference keeps it */
	m = fs_node_find(&fs, 91);
	CHECK(m == n);
	fs_node_put(&fs, m);
	/* with a writer open: its close settles it, not the change */
	n = fs_node_get(&fs, 92);
	fs_node_opened(&fs, n, 1);
	g0 = fs_node_gen(n);
	fs_node_changed(&fs, n);
	CHECK(fs_node_gen(n) > g0);
	CHECK(fs_node_writing(&fs, n));
	fs_node_closed(&fs, n, 1);
	fs_node_put(&fs, n);
	m = fs_node_find(&fs, 92);
	CHECK(m == n);
	fs_node_put(&fs, m);
	teardown();
}

/* A node's descriptor keeps its number for the node's life: replaced, it
 * refers to the new file; gone with nothing open, to nothing (its file's
 * space is freed at once). */
static void test_node_fd_stable(void)
{
	struct fs_node *root, *n;
	struct stat st, dn;
	uint64_t a, b;
	int fd, d;

	setup();
	root = fs_node_root(&fs);
	a = mkfile("x");
	b = mkfile("x.heic");
	n = lookup(root, "x");
	fd = fs_node_fd(n);
	d = open_dir(".");
	fs_node_replaced(&fs, a, b, d, "x.heic", FS_KIND_VIEW, 5000, 1);
	CHECK_EQ(fs_node_fd(n), fd);
	CHECK(fstat(fd, &st) == 0);
	CHECK_EQ(st.st_ino, b);
	CHECK_EQ(fs_node_ino(&fs, n), b);
	CHECK_EQ(fs_node_kind(&fs, n), FS_KIND_VIEW);
	CHECK_EQ(fs_node_stat(&fs, n, &st), 0);
	CHECK_EQ(st.st_size, 5000);
	CHECK(fs_node_find(&fs, a) == NULL);
	/* removed with nothing open */
	CHECK(unlinkat(d, "x.heic", 0) == 0);
	fs_node_unnamed(&fs, n, 1);
	CHECK_EQ(fs_node_fd(n), fd);
	CHECK(fstat(fd, &st) == 0 && stat("/dev/null", &dn) == 0);
	CHECK(st.st_ino == dn.st_ino && st.st_dev == dn.st_dev);
	CHECK_EQ(fs_node_stat(&fs, n, &st), -ENOENT);
	close(d);
	fs_node_forget(&fs, n, 1);
	teardown();
}

/* A file replaced by one whose inode number another node still has (a
 * stale node: its file gone, the number reused): the replaced file's node
 * stands for the new file, and is the one found by its number. */
static void test_node_replaced_over_a_stale_number(void)
{
	struct fs_node *root, *n, *m;
	struct stat st;
	uint64_t a, b;
	int d;

	setup();
	root = fs_node_root(&fs);
	a = mkfile("y");
	b = mkfile("y.heic");
	n = lookup(root, "y");
	m = fs_node_get(&fs, b); /* the number b known from before */
	d = open_dir(".");
	fs_node_replaced(&fs, a, b, d, "y.heic", FS_KIND_VIEW, 4000, 1);
	CHECK_EQ(fs_node_ino(&fs, n), b);
	CHECK_EQ(fs_node_kind(&fs, n), FS_KIND_VIEW);
	CHECK_EQ(fs_node_stat(&fs, n, &st), 0);
	CHECK(st.st_ino == b && st.st_size == 4000);
	struct fs_node *found = fs_node_find(&fs, b);
	CHECK(found == n);
	fs_node_put(&fs, found);
	fs_node_put(&fs, m); /* m goes, found no more, without harm to n */
	CHECK(fs_node_find(&fs, a) == NULL);
	CHECK_EQ(fs_node_stat(&fs, n, &st), 0);
	close(d);
	fs_node_forget(&fs, n, 1);
	teardown();
}

/* ---- commit.c ----------------------------------------------------------- */

/* An output in work/ holding data; its inode. */
static uint64_t mkwork(const char *name, const char *data)
{
	char rel[100];

	snprintf(rel, sizeof(rel), ".hevcfs/work/%s", name);
	return mkfile_with(rel, data);
}

static void test_replace_commit(void)
{
	struct idx_entry e = {.state = IDX_ARCHIVED, .view_bytes = 4}, got;
	struct sum_file sums = {0};
	struct stat st, before, after;
	struct timespec old[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
	uint64_t x, y;
	int d, err;
	char p[1000];

	setup();
	x = mkfile("sub/p.jpg");
	snprintf(p, sizeof(p), "%s/b/sub/p.jpg", dir);
	CHECK(chmod(p, 0640) == 0);
	CHECK(utimensat(AT_FDCWD, p, old, 0) == 0);
	snprintf(p, sizeof(p), "%s/b/sub", dir);
	CHECK(utimensat(AT_FDCWD, p, old, 0) == 0);
	put_queued(x, 42, "sub/p.jpg");
	y = mkwork("y.out", "archived bytes");
	snprintf(e.suffix, sizeof(e.suffix), ".heic");
	CHECK_EQ(sum_buf((const uint8_t *)"data", 4, e.orig_sum), 0);
	d = open_dir("sub");
	CHECK(fstat(d, &before) == 0);
	struct fs_replace r = {
	    .dirfd = d,
	    .dir = "sub",
	    .x_name = "p.jpg",
	    .x_ino = x,
	    .x_gen = 42,
	    .y_dirfd = fs.work_fd,
	    .y_name = "y.out",
	    .target = "p.jpg.heic",
	    .entry = &e,
	    .sums = &sums,
	    .logical = "sub/p.jpg",
	    .kind = FS_KIND_VIEW,
	    .flags = FS_REPLACE_ATTRS | FS_REPLACE_JOURNAL | FS_REPLACE_SYNC,
	};
	/* a generation the queue does not have: nothing is done */
	r.x_gen = 41;
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACE_MOVED);
	CHECK(exists("sub/p.jpg") && exists(".hevcfs/work/y.out") && !exists("sub/p.jpg.heic"));
	r.x_gen = 42;
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACED);
	CHECK_EQ(err, 0);
	CHECK(!exists("sub/p.jpg") && !exists(".hevcfs/work/y.out"));
	CHECK_EQ(ino_of("sub/p.jpg.heic"), y);
	CHECK_EQ(e.gen, y); /* the caller learns Y's inode */
	/* Y has X's mode and times, and the directory's times are the user's */
	snprintf(p, sizeof(p), "%s/b/sub/p.jpg.heic", dir);
	CHECK(stat(p, &st) == 0);
	CHECK_EQ(st.st_mode & 07777, 0640);
	CHECK_EQ(st.st_mtim.tv_sec, 1000000000);
	CHECK(fstat(d, &after) == 0);
	CHECK_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
	/* the index: X gone, Y archived, its origin known, no intent left */
	CHECK(!has_entry(x, NULL));
	CHECK(has_entry(y, &got));
	CHECK_EQ(got.state, IDX_ARCHIVED);
	CHECK_EQ(count_intents(), 0);
	{
		struct idx_txn *t;
		uint64_t oino;
		char opath[64];
		CHECK_EQ(idx_begin(fs.idx, 0, &t), 0);
		CHECK_EQ(idx_origin_get(t, e.orig_sum, &oino, opath, sizeof(opath)), 0);
		idx_abort(t);
		CHECK_EQ(oino, y);
		CHECK(!strcmp(opath, "sub/p.jpg"));
	}
	close(d);
	teardown();
}

static void test_replace_refusals(void)
{
	struct fs_node *root, *n;
	struct codec_result res = {.archived = 1};
	uint64_t x;
	int d, err;

	setup();
	x = mkfile("q.jpg");
	mkfile("q.jpg.heic"); /* the target name is taken by another file */
	put_queued(x, 7, "q.jpg");
	mkwork("o.out", "out");
	d = open_dir(".");
	struct fs_replace r = {
	    .dirfd = d,
	    .dir = "",
	    .x_name = "q.jpg",
	    .x_ino = x,
	    .x_gen = 7,
	    .y_dirfd = fs.work_fd,
	    .y_name = "o.out",
	    .target = "q.jpg.heic",
	    .flags = FS_REPLACE_ATTRS | FS_REPLACE_JOURNAL | FS_REPLACE_SYNC,
	};
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACE_TAKEN);
	CHECK(exists("q.jpg") && exists(".hevcfs/work/o.out"));
	CHECK(has_entry(x, NULL));
	CHECK_EQ(count_intents(), 0);
	CHECK(unlinkat(d, "q.jpg.heic", 0) == 0);
	/* X open by a reader: the archive waits in its node */
	root = fs_node_root(&fs);
	n = lookup(root, "q.jpg");
	fs_node_set_gen(n, 7);
	fs_node_opened(&fs, n, 0);
	r.node = n;
	r.ready = &res;
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACE_OPEN);
	CHECK(exists("q.jpg") && exists(".hevcfs/work/o.out"));
	fs_node_closed(&fs, n, 0);
	/* closed: the job is queued again, and its commit goes through; the
	 * node stands for Y */
	CHECK(fs.jobs_head && fs.jobs_head->ino == x && fs.jobs_head->gen == 7);
	CHECK(fs_node_take_ready(&fs, n, 7, &res));
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACED);
	CHECK_EQ(fs_node_ino(&fs, n), ino_of("q.jpg.heic"));
	/* X moved meanwhile */
	x = mkfile("m.jpg");
	put_queued(x, 8, "m.jpg");
	mkwork("m.out", "out");
	CHECK(renameat(d, "m.jpg", d, "moved.jpg") == 0);
	r.x_name = "m.jpg";
	r.x_ino = x;
	r.x_gen = 8;
	r.y_name = "m.out";
	r.target = "m.jpg.heic";
	r.node = NULL;
	r.ready = NULL;
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACE_MOVED);
	CHECK(exists("moved.jpg") && !exists("m.jpg.heic"));
	fs_node_forget(&fs, n, 1);
	close(d);
	teardown();
}

/* KEEP_X: X waits aside for Y (prev/), named by Y's entry. */
static void test_replace_keep_x(void)
{
	struct idx_entry got;
	uint64_t x, y;
	char aside[64];
	int d, err;

	setup();
	x = mkfile("v.jpg.heic");
	put_entry(x, IDX_ARCHIVED, ".heic", 4);
	y = mkwork("edit", "edited");
	CHECK_EQ(fs_mark_staged(&fs, y, 6, "v.jpg"), 0);
	d = open_dir(".");
	struct fs_replace r = {
	    .dirfd = d,
	    .dir = "",
	    .x_name = "v.jpg.heic",
	    .x_ino = x,
	    .y_dirfd = fs.work_fd,
	    .y_name = "edit",
	    .target = "v.jpg",
	    .flags = FS_REPLACE_KEEP_X,
	};
	CHECK_EQ(fs_replace(&fs, &r, &err), FS_REPLACED);
	CHECK(!exists("v.jpg.heic") && exists("v.jpg"));
	snprintf(aside, sizeof(aside), ".hevcfs/prev/%llu", (unsigned long long)y);
	CHECK(exists(aside));
	CHECK_EQ(ino_of(aside), x);
	CHECK(has_entry(x, &got));
	CHECK(got.flags & IDX_F_PREV);
	CHECK(has_entry(y, &got));
	CHECK_EQ(got.prev, x);
	CHECK_EQ(got.state, IDX_STAGED);
	/* the new file goes: so does what it kept aside */
	fs_prev_drop(&fs, y, x);
	CHECK(!exists(aside));
	CHECK(!has_entry(x, NULL));
	close(d);
	teardown();
}

/* An intent left by a crash is finished when Y is in place and whole, and
 * rolled back otherwise; either way nothing is lost. */
static void test_replace_recover(void)
{
	struct idx_intent in = {0};
	struct idx_txn *t;
	struct sum_file f;
	struct idx_entry got;
	int fd;

	setup();
	/* 1. Y in place and whole, X still there: forward */
	in.staged_ino = mkfile("a.jpg");
	in.archive_ino = mkfile_with("a.jpg.heic", "whole archive");
	in.entry.state = IDX_ARCHIVED;
	snprintf(in.entry.suffix, sizeof(in.entry.suffix), ".heic");
	fd = openat(fs.root_fd, "a.jpg.heic", O_RDONLY);
	CHECK(fd >= 0);
	CHECK_EQ(sum_file(fd, 0, 0, 0, NULL, NULL, &f), 0);
	close(fd);
	memcpy(in.entry.sum, f.whole, SUM_LEN);
	snprintf(in.path, sizeof(in.path), "a.jpg");
	put_queued(in.staged_ino, 1, "a.jpg");
	CHECK_EQ(idx_begin(fs.idx, 1, &t), 0);
	CHECK_EQ(idx_intent_put(t, &in), 0);
	CHECK_EQ(idx_commit(t), 0);
	/* 2. Y never renamed: back */
	struct idx_intent in2 = in;
	in2.staged_ino = mkfile("b.jpg");
	in2.archive_ino = 999999;
	snprintf(in2.path, sizeof(in2.path), "b.jpg");
	put_queued(in2.staged_ino, 1, "b.jpg");
	/* 3. Y in place but not the bytes recorded, X there: Y goes */
	struct idx_intent in3 = in;
	in3.staged_ino = mkfile("c.jpg");
	in3.archive_ino = mkfile_with("c.jpg.heic", "torn");
	snprintf(in3.path, sizeof(in3.path), "c.jpg");
	put_queued(in3.staged_ino, 1, "c.jpg");
	CHECK_EQ(idx_begin(fs.idx, 1, &t), 0);
	CHECK_EQ(idx_intent_put(t, &in2), 0);
	CHECK_EQ(idx_intent_put(t, &in3), 0);
	CHECK_EQ(idx_commit(t), 0);
	CHECK_EQ(count_intents(), 3);

	CHECK_EQ(fs_replace_recover(&fs), 0);
	CHECK_EQ(count_intents(), 0);
	CHECK(!exists("a.jpg") && exists("a.jpg.heic"));
	CHECK(has_entry(in.archive_ino, &got));
	CHECK_EQ(got.state, IDX_ARCHIVED);
	CHECK(!memcmp(got.sum, f.whole, SUM_LEN));
	CHECK(!has_entry(in.staged_ino, NULL));
	CHECK(exists("b.jpg"));
	CHECK(has_entry(in2.staged_ino, NULL));
	CHECK(exists("c.jpg") && !exists("c.jpg.heic"));
	CHECK(has_entry(in3.staged_ino, NULL));
	teardown();
}

/* ---- lock.c ------------------------------------------------------------- */

static void test_lock_order(void)
{
#ifdef NDEBUG
	SKIP("the lock order is checked in debug builds only");
#else
	struct fs_mutex a, b;
	pid_t pid;
	int status;

	fs_mutex_init(&a, FS_LOCK_NS, "ns");
	fs_mutex_init(&b, FS_LOCK_JOBS, "jobs");
	/* in order: fine */
	fs_mutex_lock(&a);
	fs_mutex_lock(&b);
	fs_mutex_unlock(&b);
	fs_mutex_unlock(&a);
	/* reversed: the process stops at once, naming both */
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		fs_mutex_lock(&b);
		fs_mutex_lock(&a);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
	fs_mutex_destroy(&a);
	fs_mutex_destroy(&b);
#endif
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/hevcfs-test-fs-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	RUN(test_reserved_names);
	RUN(test_stored_names);
	RUN(test_no_escape);
	RUN(test_archived_names_map);
	RUN(test_nodes_lookup_forget);
	RUN(test_nodes_lru);
	RUN(test_node_generations);
	RUN(test_node_changed_by_path);
	RUN(test_node_fd_stable);
	RUN(test_node_replaced_over_a_stale_number);
	RUN(test_replace_commit);
	RUN(test_replace_refusals);
	RUN(test_replace_keep_x);
	RUN(test_replace_recover);
	RUN(test_lock_order);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return check_done("test_fs");
}
