/* log — timestamped lines to stderr, an optional log file, or syslog. */
#include "lib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_fd = -1;
static atomic_int log_level = LOG_INFO;
static atomic_int log_stderr = 1;
static atomic_int log_to_syslog;

static const char *level_name(int level)
{
	switch (level) {
	case LOG_EMERG:
	case LOG_ALERT:
	case LOG_CRIT:
	case LOG_ERR:
		return "error";
	case LOG_WARNING:
		return "warning";
	case LOG_NOTICE:
	case LOG_INFO:
		return "info";
	default:
		return "debug";
	}
}

void log_msg(int level, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n, m;

	if (level > atomic_load(&log_level))
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	n = (int)strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
	n += snprintf(line + n, sizeof(line) - (size_t)n,
		      ".%03ld hevcfs %s: ", ts.tv_nsec / 1000000, level_name(level));
	va_start(ap, fmt);
	m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	if (atomic_load(&log_to_syslog))
		syslog(level, "%s", line + n); /* the journal adds time and name */
	n += m;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	if (atomic_load(&log_stderr) && write(2, line, (size_t)n) < 0) {
		/* nowhere left to report it */
	}
	int fd = atomic_load(&log_fd);
	if (fd >= 0 && write(fd, line, (size_t)n) < 0) {
		/* a full disk must not stop the filesystem */
	}
}

int log_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd == -1)
		return -errno;
	int old = atomic_exchange(&log_fd, fd);
	if (old >= 0)
		close(old);
	return 0;
}

void log_set_level(int level)
{
	atomic_store(&log_level, level);
}

void log_quiet_stderr(void)
{
	atomic_store(&log_stderr, 0);
}

void log_syslog(const char *ident)
{
	openlog(ident, LOG_PID, LOG_DAEMON);
	atomic_store(&log_to_syslog, 1);
	atomic_store(&log_stderr, 0);
}
