/* progress — progress bars redrawn in place on a terminal, plain lines
 * when the output is piped; sizes and durations in words. */
#include "tools.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A terminal is redrawn at most this often; a pipe gets a line at most
 * this often. */
#define TTY_REDRAW_MS 100
#define PIPE_LINE_MS 5000

static int64_t last_ms = -1;
static int shown;

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int progress_tty(void)
{
	return isatty(STDOUT_FILENO);
}

void progress_bar(char *buf, int width, double fraction)
{
	int full = (int)(fraction * width + 0.5);

	if (full < 0)
		full = 0;
	if (full > width)
		full = width;
	buf[0] = '[';
	memset(buf + 1, '#', (size_t)full);
	memset(buf + 1 + full, '-', (size_t)(width - full));
	buf[width + 1] = ']';
	buf[width + 2] = '\0';
}

const char *human_bytes(uint64_t n, char *buf, size_t size)
{
	static const char *const units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
	double v = (double)n;
	int u = 0;

	while (v >= 1000 && u < 5) {
		v /= 1000;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, size, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[u]);
	return buf;
}

const char *human_time(double s, char *buf, size_t size)
{
	long t = s < 0 ? 0 : (long)(s + 0.5);

	if (t < 60)
		snprintf(buf, size, "%ld s", t);
	else if (t < 3600)
		snprintf(buf, size, "%ld min %02ld s", t / 60, t % 60);
	else
		snprintf(buf, size, "%ld h %02ld min", t / 3600, t % 3600 / 60);
	return buf;
}

void progress_line(int force, const char *fmt, ...)
{
	int64_t now = now_ms();
	int tty = progress_tty();
	char line[512];
	va_list ap;

	/* a pipe gets its first line after PIPE_LINE_MS too: a short run
	 * needs none */
	if (last_ms < 0 && !tty)
		last_ms = now;
	if (!force && last_ms >= 0 && now - last_ms < (tty ? TTY_REDRAW_MS : PIPE_LINE_MS))
		return;
	last_ms = now;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (tty) {
		printf("\r%s\033[K", line);
		shown = 1;
	} else {
		printf("%s\n", line);
	}
	fflush(stdout);
}

void progress_done(void)
{
	if (shown && progress_tty()) {
		printf("\n");
		fflush(stdout);
	}
	shown = 0;
	last_ms = -1;
}

void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}
