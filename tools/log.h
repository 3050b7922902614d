/*
 * log — the one logging function every module calls.
 *
 * Levels are syslog's (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG). Lines go to
 * stderr and, once log_open() has named a file, to that file too (the mount
 * logs to BACKING/.hevcfs/log). Thread safe: one write(2) per line.
 */
#ifndef HEVCFS_LOG_H
#define HEVCFS_LOG_H

#include <syslog.h>

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Also append lines to path (O_APPEND). Returns 0 or -errno. */
int log_open(const char *path);

/* Lines above this level are dropped (default LOG_INFO). */
void log_set_level(int level);

/* Stop writing to stderr (after the mount daemonizes). */
void log_quiet_stderr(void);

#endif
