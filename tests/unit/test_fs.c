/* Unit tests of fs/ without a mount: name mapping, safe resolution, nodes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../fs/internal.h"
#include "check.h"

static char dir[64];
static struct fs_config cfg;
static struct fs fs;

/* A backing tree with an index, and a struct fs over it. */
static void setup(void)
{
	char p[1000];

	snprintf(p, sizeof(p), "rm -rf %s/b && mkdir -p %s/b/.hevcfs/hidden %s/b/sub", dir, dir,
		 dir);
	CHECK(system(p) == 0);
	fs_config_init(&cfg);
	memset(&fs, 0, sizeof(fs));
	fs.cfg = &cfg;
	snprintf(p, sizeof(p), "%s/b", dir);
	fs.root_fd = open(p, O_PATH | O_DIRECTORY);
	CHECK(fs.root_fd >= 0);
	snprintf(p, sizeof(p), "%s/b/.hevcfs/hidden", dir);
	fs.hidden_fd = open(p, O_PATH | O_DIRECTORY);
	CHECK(fs.hidden_fd >= 0);
	snprintf(p, sizeof(p), "%s/b/.hevcfs/index", dir);
	CHECK_EQ(idx_open(p, 0, &fs.idx), 0);
	pthread_mutex_init(&fs.nodes_lock, NULL);
	fs.nodes_size = 64;
	fs.nodes = calloc(fs.nodes_size, sizeof(*fs.nodes));
}

static void teardown(void)
{
	idx_close(fs.idx);
	close(fs.root_fd);
	close(fs.hidden_fd);
	free(fs.nodes);
}

/* Create a backing file and return its inode. */
static uint64_t mkfile(const char *rel)
{
	char p[1000];
	struct stat st;
	int fd;

	snprintf(p, sizeof(p), "%s/b/%s", dir, rel);
	fd = open(p, O_CREAT | O_WRONLY, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, "data", 4) == 4);
	fstat(fd, &st);
	close(fd);
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

static void test_reserved_names(void)
{
	CHECK(fs_path_reserved("/.hevcfs"));
	CHECK(fs_path_reserved("/.hevcfs/index/data.mdb"));
	CHECK(!fs_path_reserved("/.hevcfsx"));
	CHECK(!fs_path_reserved("/sub/.hevcfs"));
	CHECK(!fs_path_reserved("/"));
	CHECK(fs_has_archive_suffix("a.JPG.heic"));
	CHECK(fs_has_archive_suffix("clip.avi.mp4"));
	CHECK(!fs_has_archive_suffix(".heic"));
	CHECK(!fs_has_archive_suffix("IMG.HEIC"));
}

/* No name, symlink or ".." resolves outside BACKING. */
static void test_no_escape(void)
{
	char p[1000];
	const char *name;
	int fd;

	setup();
	snprintf(p, sizeof(p), "%s/b/up", dir);
	CHECK(symlink("/", p) == 0);
	snprintf(p, sizeof(p), "%s/b/sub/rel", dir);
	CHECK(symlink("../..", p) == 0);
	fd = fs_open_parent(&fs, "/up/etc/passwd", &name);
	CHECK_EQ(fd, -ELOOP);
	fd = fs_open_parent(&fs, "/sub/rel/x", &name);
	CHECK_EQ(fd, -ELOOP);
	fd = fs_open_parent(&fs, "/sub/../../x", &name);
	CHECK(fd < 0);
	fd = fs_open_path(&fs, "/up", O_RDONLY, 0);
	CHECK(fd < 0);
	fd = fs_open_path(&fs, "/sub/rel", O_RDONLY | O_DIRECTORY, 0);
	CHECK(fd < 0);
	fd = fs_open_parent(&fs, "/sub/x", &name);
	CHECK(fd >= 0);
	CHECK(!strcmp(name, "x"));
	close(fd);
	struct fs_lookup lk;
	CHECK_EQ(fs_lookup(&fs, "/.hevcfs", &lk), -ENOENT);
	CHECK_EQ(fs_lookup(&fs, "/.hevcfs/index", &lk), -ENOENT);
	teardown();
}

static void test_archived_names_map(void)
{
	struct fs_lookup lk;
	struct idx_txn *t;
	char buf[600];
	uint64_t a, k, v;

	setup();
	a = mkfile("sub/IMG_1.JPG.heic");
	put_entry(a, IDX_ARCHIVED, ".heic", 123456);
	k = mkfile("sub/phone.heic"); /* a HEIC the user copied in: kept */
	put_entry(k, IDX_KEPT, "", 4);
	v = mkfile("sub/clip.MOV"); /* a video that kept its name */
	put_entry(v, IDX_ARCHIVED, "", 4);

	CHECK_EQ(fs_lookup(&fs, "/sub/IMG_1.JPG", &lk), 0);
	CHECK(lk.archived);
	CHECK(!strcmp(lk.name, "IMG_1.JPG.heic"));
	CHECK_EQ(lk.e.view_bytes, 123456);
	close(lk.parent);
	CHECK_EQ(fs_lookup(&fs, "/sub/IMG_1.JPG.heic", &lk), -ENOENT);
	CHECK_EQ(fs_lookup(&fs, "/sub/phone.heic", &lk), 0);
	CHECK(!lk.archived);
	close(lk.parent);
	CHECK_EQ(fs_lookup(&fs, "/sub/phone", &lk), -ENOENT);
	/* a video that kept its name reads its own (stored) bytes: nothing to
	 * map, so the hot path does not even look it up */
	CHECK_EQ(fs_lookup(&fs, "/sub/clip.MOV", &lk), 0);
	CHECK(!lk.archived);
	CHECK(!strcmp(lk.name, "clip.MOV"));
	close(lk.parent);

	CHECK_EQ(idx_begin(fs.idx, 0, &t), 0);
	CHECK(!strcmp(fs_logical_name(&fs, t, "IMG_1.JPG.heic", a, buf, sizeof(buf)), "IMG_1.JPG"));
	CHECK(!strcmp(fs_logical_name(&fs, t, "phone.heic", k, buf, sizeof(buf)), "phone.heic"));
	cfg.view = FS_VIEW_NATIVE;
	CHECK(!strcmp(fs_logical_name(&fs, t, "IMG_1.JPG.heic", a, buf, sizeof(buf)),
		      "IMG_1.JPG.heic"));
	idx_abort(t);
	CHECK_EQ(fs_lookup(&fs, "/sub/IMG_1.JPG", &lk), -ENOENT);
	CHECK_EQ(fs_lookup(&fs, "/sub/IMG_1.JPG.heic", &lk), 0);
	close(lk.parent);
	cfg.view = FS_VIEW_LEGACY;

	/* names at the limit */
	char longname[300];
	memset(longname, 'L', 255);
	longname[255] = '\0';
	snprintf(buf, sizeof(buf), "sub/%s", longname);
	mkfile(buf);
	snprintf(buf, sizeof(buf), "/sub/%s", longname);
	CHECK_EQ(fs_lookup(&fs, buf, &lk), 0);
	close(lk.parent);
	memset(longname, 'L', 256);
	longname[256] = '\0';
	snprintf(buf, sizeof(buf), "/sub/%s", longname);
	CHECK_EQ(fs_lookup(&fs, buf, &lk), -ENAMETOOLONG);
	teardown();
}

/* Names libfuse gives files removed while open resolve in the hidden
 * directory, under a key naming their directory, and only from there. */
static void test_hidden_names(void)
{
	struct fs_lookup lk;
	struct stat st;
	char p[1000], key[64];
	uint64_t hidden, plain;
	int dfd;

	CHECK(fs_hidden_name(".fuse_hidden0000000200000001"));
	CHECK(fs_hidden_name(".fuse_hiddenabcdef0123456789"));
	CHECK(!fs_hidden_name(".fuse_hidden000000020000000"));
	CHECK(!fs_hidden_name(".fuse_hidden00000002000000011"));
	CHECK(!fs_hidden_name(".fuse_hidden000000020000000G"));
	CHECK(!fs_hidden_name(".fuse_hidden00000002ABCDEF01"));
	CHECK(!fs_hidden_name("x.fuse_hidden0000000200000001"));
	CHECK(!strcmp(fs_basename("/a/b/c"), "c"));
	CHECK(!strcmp(fs_basename("c"), "c"));

	setup();
	snprintf(p, sizeof(p), "%s/b/sub", dir);
	CHECK(stat(p, &st) == 0);
	dfd = open(p, O_PATH | O_DIRECTORY);
	CHECK(dfd >= 0);
	CHECK_EQ(fs_hidden_key(dfd, ".fuse_hidden0000000200000001", key, sizeof(key)), 0);
	close(dfd);
	snprintf(p, sizeof(p), "%llx-.fuse_hidden0000000200000001", (unsigned long long)st.st_ino);
	CHECK(!strcmp(key, p));
	snprintf(p, sizeof(p), ".hevcfs/hidden/%s", key);
	hidden = mkfile(p);
	CHECK_EQ(fs_lookup(&fs, "/sub/.fuse_hidden0000000200000001", &lk), 0);
	CHECK_EQ(lk.st.st_ino, hidden);
	CHECK(lk.hidden && !strcmp(lk.name, key));
	close(lk.parent);
	/* the same name in another directory is that directory's own */
	CHECK_EQ(fs_lookup(&fs, "/.fuse_hidden0000000200000001", &lk), -ENOENT);
	CHECK_EQ(lk.parent, -1);
	plain = mkfile(".fuse_hidden0000000200000001");
	CHECK_EQ(fs_lookup(&fs, "/.fuse_hidden0000000200000001", &lk), 0);
	CHECK_EQ(lk.st.st_ino, plain);
	CHECK(!lk.hidden);
	close(lk.parent);
	CHECK_EQ(fs_lookup(&fs, "/gone/.fuse_hidden0000000200000001", &lk), -ENOENT);
	teardown();
}

static void test_node_generations(void)
{
	setup();
	struct node *n = fs_node_get(&fs, 77), *m;
	uint64_t g0 = atomic_load(&n->gen);
	fs_node_touch(&fs, n);
	CHECK(atomic_load(&n->gen) > g0);
	CHECK_EQ(atomic_load(&n->cancel), 1);
	m = fs_node_find(&fs, 77);
	CHECK(m == n);
	CHECK(fs_node_find(&fs, 78) == NULL);
	fs_node_put(&fs, m);
	fs_node_put(&fs, n);
	CHECK(fs_node_find(&fs, 77) == NULL);

	n = fs_node_get(&fs, 5);
	n->path = strdup("trip/day1/a.jpg");
	fs_nodes_rename(&fs, "/trip", "/2026/trip");
	CHECK(!strcmp(n->path, "2026/trip/day1/a.jpg"));
	fs_nodes_rename(&fs, "/2026/tri", "/x");
	CHECK(!strcmp(n->path, "2026/trip/day1/a.jpg"));
	fs_node_put(&fs, n);
	teardown();
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/hevcfs-test-fs-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	RUN(test_reserved_names);
	RUN(test_no_escape);
	RUN(test_archived_names_map);
	RUN(test_hidden_names);
	RUN(test_node_generations);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		return 1;
	return check_done("test_fs");
}
