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
static int read_report(int fd, pid_t pid, const struct codec_opts *opts,
		       struct codec_result *res, int *have)
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
			if (sscanf(line, "progress %llu %llu %lf", &a, &b, &x) == 3 && opts->progress) {
				opts->progress(opts->progress_arg, a, b, x);
			} else if (sscanf(line, "result %d %d %7s %llu %llu %llu %d %lf %lf", &code, &ar,
					  suffix, &b, &c, &d, &q, &y, &z) == 9) {
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

int fs_archive_isolated(int src_fd, const char *out_path, const char *view_path,
			const struct codec_opts *opts, struct codec_result *res)
{
	posix_spawn_file_actions_t fa;
	char optbuf[8][96];
	char *argv[24];
	int argc = 0, pipefd[2], have = 0, status, rc;
	pid_t pid;

	memset(res, 0, sizeof(*res));
	if (pipe2(pipefd, O_CLOEXEC) == -1)
		return -errno;
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
	argv[argc] = NULL;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, src_fd, CHILD_SRC_FD);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (rc) {
		close(pipefd[0]);
		log_msg(LOG_ERR, "cannot start an archive job: %s", strerror(rc));
		return -rc;
	}
	rc = read_report(pipefd[0], pid, opts, res, &have);
	close(pipefd[0]);
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

/* The child's progress: a line on stdout. */
static void child_progress(void *arg, uint64_t done, uint64_t total, double fps)
{
	(void)arg;
	printf("progress %llu %llu %.2f\n", (unsigned long long)done, (unsigned long long)total,
	       fps);
	fflush(stdout);
}

int fs_archive_child(int argc, char *argv[])
{
	struct codec_opts o = {0};
	struct codec_result r;
	int rc;

	if (argc < 7)
		return 2;
	/* die with the mount: a killed daemon must leave no job writing into
	 * the work directory that the next mount's recovery empties */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != (pid_t)atoi(argv[2]))
		return 3;
	argv++; /* past the parent's pid */
	argc--;
	if (strcmp(argv[4], "-"))
		o.preset = argv[4];
	if (strcmp(argv[5], "-"))
		o.x265_params = argv[5];
	for (int i = 6; i < argc; i++) {
		const char *a = argv[i];
		if (!strncmp(a, "photo_quality=", 14))
			o.photo_quality = atoi(a + 14);
		else if (!strncmp(a, "min_ssim=", 9))
			o.min_ssim = strtod(a + 9, NULL);
		else if (!strncmp(a, "view_quality=", 13))
			o.view_quality = atoi(a + 13);
		else if (!strncmp(a, "min_view_ssim=", 14))
			o.min_view_ssim = strtod(a + 14, NULL);
		else if (!strncmp(a, "crf=", 4))
			o.crf = atoi(a + 4);
		else if (!strncmp(a, "min_video_ssim=", 15))
			o.min_video_ssim = strtod(a + 15, NULL);
		else if (!strncmp(a, "threads=", 8))
			o.threads = atoi(a + 8);
		else if (!strncmp(a, "max_pixels=", 11))
			o.max_pixels = strtoull(a + 11, NULL, 10);
	}
	o.progress = child_progress;
	rc = codec_archive(CHILD_SRC_FD, argv[2], strcmp(argv[3], "-") ? argv[3] : NULL, &o, &r);
	printf("result %d %d %s %llu %llu %llu %d %.6f %.6f\n", rc, r.archived,
	       r.suffix[0] ? r.suffix : "-", (unsigned long long)r.orig_bytes,
	       (unsigned long long)r.stored_bytes, (unsigned long long)r.view_bytes, r.quality,
	       r.ssim, r.view_ssim);
	for (char *p = r.reason; *p; p++)
		if (*p == '\n')
			*p = ' ';
	printf("reason %s\n", r.reason);
	return fflush(stdout) == 0 ? 0 : 1;
}
