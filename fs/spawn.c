/*
 * spawn — archive jobs run in a child process (the hevcfs binary itself,
 * started with the hidden command "__archive"). A decoder that crashes on a
 * hostile file takes down only its child, never the mount; whatever a codec
 * library fails to free goes with the child; and a job is cancelled at once
 * by killing it.
 *
 * The child reads the source on fd 3, writes outputs to the paths it is
 * given, dies with its parent, and reports on stdout, one line each:
 *   progress DONE TOTAL FPS
 *   result RC ARCHIVED SUFFIX ORIG STORED VIEW QUALITY SSIM VIEW_SSIM
 *   reason TEXT
 *   photo CARRIES VIEW_OWN_SIZE ORIG_SHA256 SCAN_SHA256
 *   viewwhy TEXT
 * A scrub's decode runs the same way ("__check"), reporting
 *   check RC WHY
 * and so does a view's render ("__render", to the path it is given):
 *   render RC SIZE
 * so a stored photo damaged on purpose can crash a decoder, never the
 * mount, and renders of different photos run side by side.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define CHILD_SRC_FD 3
/* An archive a metadata edit may keep the pictures of (codec_retag). */
#define CHILD_PREV_FD 4

/* Options travel as arguments "key=value"; strings may be empty. */
static void opts_to_args(const struct codec_opts *o, char buf[][96], char **argv, int *argc)
{
	int n = *argc;

	snprintf(buf[0], 96, "photo_quality=%d", o->photo_quality);
	snprintf(buf[1], 96, "min_ssim=%.17g", o->min_ssim);
	snprintf(buf[2], 96, "view_quality=%d", o->view_quality);
	snprintf(buf[3], 96, "min_view_ssim=%.17g", o->min_view_ssim);
	snprintf(buf[4], 96, "crf=%d", o->crf);
	snprintf(buf[5], 96, "min_video_ssim=%.17g", o->min_video_ssim);
	snprintf(buf[6], 96, "threads=%d", o->threads);
	snprintf(buf[7], 96, "max_pixels=%llu", (unsigned long long)o->max_pixels);
	for (int i = 0; i < 8; i++)
		argv[n++] = buf[i];
	*argc = n;
}

/* Read the child's report until EOF, polling the cancel flag. */
static int read_report(int fd, pid_t pid, const struct codec_opts *opts, struct codec_result *res,
		       int *have)
{
	char line[512];
	size_t len = 0;
	int rc = 0;

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int n = poll(&p, 1, 100);
		if (opts->cancel && atomic_load(opts->cancel)) {
			kill(pid, SIGKILL);
			return -ECANCELED;
		}
		if (n <= 0)
			continue;
		ssize_t r = read(fd, line + len, sizeof(line) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return rc;
		len += (size_t)r;
		line[len] = '\0';
		char *nl;
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			unsigned long long a, b, c, d;
			double x, y, z;
			int ar, q, code;
			char suffix[8];
			if (sscanf(line, "progress %llu %llu %lf", &a, &b, &x) == 3 &&
			    opts->progress) {
				opts->progress(opts->progress_arg, a, b, x);
			} else if (sscanf(line, "result %d %d %7s %llu %llu %llu %d %lf %lf", &code,
					  &ar, suffix, &b, &c, &d, &q, &y, &z) == 9) {
				*have = 1;
				rc = code;
				res->archived = ar;
				snprintf(res->suffix, sizeof(res->suffix), "%s",
					 strcmp(suffix, "-") ? suffix : "");
				res->orig_bytes = b;
				res->stored_bytes = c;
				res->view_bytes = d;
				res->quality = q;
				res->ssim = y;
				res->view_ssim = z;
			} else if (!strncmp(line, "photo ", 6)) {
				unsigned carries;
				int own;
				char orig[SUM_HEX], scan[SUM_HEX];
				if (sscanf(line, "photo %u %d %64s %64s", &carries, &own, orig,
					   scan) == 4) {
					res->carries = carries;
					res->view_own_size = own;
					if (sum_parse_hex(orig, res->orig_sum))
						memset(res->orig_sum, 0, SUM_LEN);
					if (sum_parse_hex(scan, res->scan_sum))
						memset(res->scan_sum, 0, SUM_LEN);
				}
			} else if (!strcmp(line, "retagged")) {
				res->retagged = 1;
			} else if (!strncmp(line, "viewwhy ", 8)) {
				size_t wl = strnlen(line + 8, sizeof(res->view_why) - 1);
				memcpy(res->view_why, line + 8, wl);
				res->view_why[wl] = '\0';
			} else if (!strncmp(line, "reason ", 7)) {
				size_t rl = strnlen(line + 7, sizeof(res->reason) - 1);
				memcpy(res->reason, line + 7, rl);
				res->reason[rl] = '\0';
			}
			size_t used = (size_t)(nl + 1 - line);
			memmove(line, nl + 1, len - used + 1);
			len -= used;
		}
		if (len == sizeof(line) - 1)
			len = 0; /* an overlong line: drop it */
	}
}

/* Start "hevcfs CMD PPID args..." with src_fd as its fd 3 (and prev_fd,
 * when not -1, as its fd 4) and its stdout on a pipe (*out, the read end).
 * 0 or -errno. */
static int spawn_child(int src_fd, int prev_fd, char **argv, pid_t *pid, int *out)
{
	posix_spawn_file_actions_t fa;
	int pipefd[2], rc;

	if (pipe2(pipefd, O_CLOEXEC) == -1)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, src_fd, CHILD_SRC_FD);
	if (prev_fd >= 0)
		posix_spawn_file_actions_adddup2(&fa, prev_fd, CHILD_PREV_FD);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	rc = posix_spawn(pid, "/proc/self/exe", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (rc) {
		close(pipefd[0]);
		log_msg(LOG_ERR, "cannot start a child process: %s", strerror(rc));
		return -rc;
	}
	*out = pipefd[0];
	return 0;
}

int fs_archive_isolated(int src_fd, int prev_fd, const char *out_path, const char *view_path,
			const struct codec_opts *opts, struct codec_result *res)
{
	char optbuf[8][96];
	char *argv[24];
	int argc = 0, fd, have = 0, status, rc;
	pid_t pid;

	memset(res, 0, sizeof(*res));
	char ppid[32];
	snprintf(ppid, sizeof(ppid), "%d", (int)getpid());
	argv[argc++] = "hevcfs";
	argv[argc++] = "__archive";
	argv[argc++] = ppid;
	argv[argc++] = (char *)out_path;
	argv[argc++] = (char *)(view_path ? view_path : "-");
	argv[argc++] = (char *)(opts->preset ? opts->preset : "-");
	argv[argc++] = (char *)(opts->x265_params ? opts->x265_params : "-");
	opts_to_args(opts, optbuf, argv, &argc);
	if (prev_fd >= 0)
		argv[argc++] = "prev=4";
	argv[argc] = NULL;
	rc = spawn_child(src_fd, prev_fd, argv, &pid, &fd);
	if (rc)
		return rc;
	rc = read_report(fd, pid, opts, res, &have);
	close(fd);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (rc == -ECANCELED)
		return rc;
	if (!have || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		/* the codec died on this input: keep the original, say why */
		memset(res, 0, sizeof(*res));
		if (WIFSIGNALED(status))
			snprintf(res->reason, sizeof(res->reason),
				 "the decoder crashed on this file (signal %d)", WTERMSIG(status));
		else
			snprintf(res->reason, sizeof(res->reason),
				 "the archiving process failed (exit %d)",
				 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		log_msg(LOG_WARNING, "archive job: %s", res->reason);
		return 0;
	}
	return rc;
}

int fs_check_isolated(int src_fd, const struct codec_opts *opts, char *why, size_t len)
{
	char optbuf[8][96], line[512];
	char *argv[24];
	int argc = 0, fd, status, rc, code = 0, have = 0;
	size_t n = 0;
	pid_t pid;

	char ppid[32];
	snprintf(ppid, sizeof(ppid), "%d", (int)getpid());
	argv[argc++] = "hevcfs";
	argv[argc++] = "__check";
	argv[argc++] = ppid;
	argv[argc++] = (char *)(opts && opts->preset ? opts->preset : "-");
	if (opts)
		opts_to_args(opts, optbuf, argv, &argc);
	argv[argc] = NULL;
	why[0] = '\0';
	rc = spawn_child(src_fd, -1, argv, &pid, &fd);
	if (rc)
		return rc;
	for (;;) {
		ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (n == sizeof(line) - 1)
			break;
	}
	line[n] = '\0';
	close(fd);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (!strncmp(line, "check ", 6)) {
		char *sp = strchr(line + 6, ' ');
		code = atoi(line + 6);
		have = 1;
		if (sp) {
			sp[strcspn(sp, "\n")] = '\0';
			snprintf(why, len, "%s", sp + 1);
		}
	}
	if (WIFSIGNALED(status)) {
		snprintf(why, len, "the decoder crashed on it (signal %d)", WTERMSIG(status));
		return 1;
	}
	if (!have || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		snprintf(why, len, "the decoding process failed (exit %d)",
			 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		return -EIO;
	}
	return code;
}

int fs_render_isolated(int src_fd, const char *out_path, int sibling, const struct codec_opts *opts,
		       uint64_t *size)
{
	char optbuf[8][96], line[128];
	char *argv[24];
	int argc = 0, fd, status, rc, code = -EIO, have = 0;
	unsigned long long got = 0;
	size_t n = 0;
	pid_t pid;
	char ppid[32];

	snprintf(ppid, sizeof(ppid), "%d", (int)getpid());
	argv[argc++] = "hevcfs";
	argv[argc++] = "__render";
	argv[argc++] = ppid;
	argv[argc++] = (char *)out_path;
	argv[argc++] = sibling ? "sibling" : "view";
	opts_to_args(opts, optbuf, argv, &argc);
	argv[argc] = NULL;
	rc = spawn_child(src_fd, -1, argv, &pid, &fd);
	if (rc)
		return rc;
	for (;;) {
		ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (n == sizeof(line) - 1)
			break;
	}
	line[n] = '\0';
	close(fd);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	have = sscanf(line, "render %d %llu", &code, &got) == 2;
	if (WIFSIGNALED(status)) {
		log_msg(LOG_WARNING, "render: the decoder crashed (signal %d)", WTERMSIG(status));
		return -EIO; /* the stored file does not decode */
	}
	if (!have || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -ECHILD;
	*size = got;
	return code;
}

/* The child's progress: a line on stdout. */
static void child_progress(void *arg, uint64_t done, uint64_t total, double fps)
{
	(void)arg;
	printf("progress %llu %llu %.2f\n", (unsigned long long)done, (unsigned long long)total,
	       fps);
	fflush(stdout);
}

/* Read codec options from "key=value" arguments. */
static void args_to_opts(int argc, char *argv[], struct codec_opts *o)
{
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!strncmp(a, "photo_quality=", 14))
			o->photo_quality = atoi(a + 14);
		else if (!strncmp(a, "min_ssim=", 9))
			o->min_ssim = strtod(a + 9, NULL);
		else if (!strncmp(a, "view_quality=", 13))
			o->view_quality = atoi(a + 13);
		else if (!strncmp(a, "min_view_ssim=", 14))
			o->min_view_ssim = strtod(a + 14, NULL);
		else if (!strncmp(a, "crf=", 4))
			o->crf = atoi(a + 4);
		else if (!strncmp(a, "min_video_ssim=", 15))
			o->min_video_ssim = strtod(a + 15, NULL);
		else if (!strncmp(a, "threads=", 8))
			o->threads = atoi(a + 8);
		else if (!strncmp(a, "max_pixels=", 11))
			o->max_pixels = strtoull(a + 11, NULL, 10);
	}
}

/* A child's start: die with the parent that named itself in argv[2] (a
 * killed daemon must leave no child writing into its work directory). 0, or
 * the exit status when the parent is not that one. */
static int child_start(char *argv[])
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	return getppid() == (pid_t)atoi(argv[2]) ? 0 : 3;
}

int fs_archive_child(int argc, char *argv[])
{
	struct codec_opts o = {0};
	struct codec_result r;
	int rc;

	if (argc < 7)
		return 2;
	if ((rc = child_start(argv)))
		return rc;
	argv++; /* past the parent's pid */
	argc--;
	if (strcmp(argv[4], "-"))
		o.preset = argv[4];
	if (strcmp(argv[5], "-"))
		o.x265_params = argv[5];
	args_to_opts(argc - 6, argv + 6, &o);
	o.progress = child_progress;
	rc = -ENOENT;
	for (int i = 6; i < argc; i++) {
		/* a metadata edit of that archive's view keeps its pictures */
		if (!strcmp(argv[i], "prev=4")) {
			rc = codec_retag(CHILD_PREV_FD, CHILD_SRC_FD, argv[2],
					 strcmp(argv[3], "-") ? argv[3] : NULL, &o, &r);
			if (rc == 0 && r.archived)
				printf("retagged\n");
		}
	}
	if (rc || !r.archived)
		rc = codec_archive(CHILD_SRC_FD, argv[2], strcmp(argv[3], "-") ? argv[3] : NULL, &o,
				   &r);
	printf("result %d %d %s %llu %llu %llu %d %.6f %.6f\n", rc, r.archived,
	       r.suffix[0] ? r.suffix : "-", (unsigned long long)r.orig_bytes,
	       (unsigned long long)r.stored_bytes, (unsigned long long)r.view_bytes, r.quality,
	       r.ssim, r.view_ssim);
	for (char *p = r.reason; *p; p++)
		if (*p == '\n')
			*p = ' ';
	printf("reason %s\n", r.reason);
	if (r.archived) {
		char orig[SUM_HEX], scan[SUM_HEX];
		sum_hex(r.orig_sum, orig);
		sum_hex(r.scan_sum, scan);
		printf("photo %u %d %s %s\n", r.carries, r.view_own_size, orig, scan);
		for (char *p = r.view_why; *p; p++)
			if (*p == '\n')
				*p = ' ';
		if (r.view_why[0])
			printf("viewwhy %s\n", r.view_why);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}

int fs_check_child(int argc, char *argv[])
{
	struct codec_opts o = {0};
	char why[256];
	int rc;

	if (argc < 4)
		return 2;
	if ((rc = child_start(argv)))
		return rc;
	if (strcmp(argv[3], "-"))
		o.preset = argv[3];
	args_to_opts(argc - 4, argv + 4, &o);
	rc = codec_check_stored(CHILD_SRC_FD, &o, why, sizeof(why));
	for (char *p = why; *p; p++)
		if (*p == '\n')
			*p = ' ';
	printf("check %d %s\n", rc, why);
	return fflush(stdout) == 0 ? 0 : 1;
}

int fs_render_child(int argc, char *argv[])
{
	struct codec_opts o = {0};
	uint64_t size = 0;
	int rc;

	if (argc < 5)
		return 2;
	if ((rc = child_start(argv)))
		return rc;
	args_to_opts(argc - 5, argv + 5, &o);
	if (!strcmp(argv[4], "sibling"))
		rc = codec_render_heif_jpeg(CHILD_SRC_FD, argv[3], &o, &size);
	else
		rc = codec_render_view(CHILD_SRC_FD, argv[3], &o, &size);
	printf("render %d %llu\n", rc, (unsigned long long)size);
	return fflush(stdout) == 0 ? 0 : 1;
}
