/* Host build: the protocol core on a pseudo-terminal, a real serial device that
 * serial.serial_for_url() opens like a USB-serial board. Prints the device path
 * on stdout, then serves until SIGTERM/SIGINT or until stdin reaches end of file
 * (when started with --stdin-ends).
 *
 *   labkit-fw-host [--arm-timeout-ms N] [--seed N] [--stdin-ends]
 *   labkit-fw-bridge ... --bridge-fd FD    (the same, over the emulated chip: hal_bridge.c)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "hal_model.h"
#include "lkb_core.h"

static int master = -1;
static volatile sig_atomic_t stop = 0;
static lkb_board board; /* static: all of the core's RAM */

static void on_signal(int sig) { (void)sig; stop = 1; }

void lkb_hal_write(const uint8_t *data, size_t n)
{
    while (n > 0) {
        ssize_t k = write(master, data, n);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return;
        }
        data += k;
        n -= (size_t)k;
    }
}

static uint32_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static void make_raw(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) != 0)
        return;
    t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_oflag &= ~(tcflag_t)OPOST;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    t.c_cflag |= CS8;
    tcsetattr(fd, TCSANOW, &t);
}

int main(int argc, char **argv)
{
    unsigned long arm_timeout = 1000, seed = 1;
    int stdin_ends = 0, slave, i, bridge_fd = -1;
    const char *path;
    uint8_t buf[4096];
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--arm-timeout-ms") && i + 1 < argc)
            arm_timeout = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--bridge-fd") && i + 1 < argc)
            bridge_fd = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--stdin-ends"))
            stdin_ends = 1;
        else {
            fprintf(stderr, "usage: %s [--arm-timeout-ms N] [--seed N] [--bridge-fd FD] [--stdin-ends]\n", argv[0]);
            return 2;
        }
    }
    master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master) || !(path = ptsname(master))) {
        perror("pseudo-terminal");
        return 1;
    }
    slave = open(path, O_RDWR | O_NOCTTY); /* held open: a host closing its end is no hang-up */
    if (slave < 0) {
        perror(path);
        return 1;
    }
    make_raw(slave);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    if (lkb_host_start(seed, bridge_fd)) {
        fprintf(stderr, "hardware layer did not start\n");
        return 1;
    }
    lkb_init(&board, now_ms(), (uint32_t)arm_timeout);
    printf("%s\n", path);
    fflush(stdout);
    while (!stop) {
        fd_set fds;
        struct timeval tv = {0, 5000};
        FD_ZERO(&fds);
        FD_SET(master, &fds);
        if (stdin_ends)
            FD_SET(0, &fds);
        if (select(master + 1, &fds, NULL, NULL, &tv) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (stdin_ends && FD_ISSET(0, &fds) && read(0, buf, sizeof buf) <= 0)
            break;
        if (FD_ISSET(master, &fds)) {
            ssize_t n = read(master, buf, sizeof buf);
            if (n > 0)
                lkb_rx(&board, buf, (size_t)n, now_ms());
        }
        lkb_tick(&board, now_ms());
    }
    lkb_hal_hv_enable(0);
    close(slave);
    close(master);
    return 0;
}
