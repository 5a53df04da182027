/* L2 check for the nested runner (tests/tests/nested.rs, cargo xtask bench nested): Linux's
 * virtio-mmio, virtio_net and virtio_vsock drivers on our VMM's devices.
 * Usage: check [TCP_BYTES [VSOCK_BYTES]]; TCP_BYTES 0 skips the net steps (no net device, e.g.
 * under the qemu runner, whose vsock echo peer is then the host).
 *  1. unbind and re-bind each virtio-mmio device (device reset + re-probe by the driver);
 *  2. eth0 = 10.0.2.15/24, TCP to L1's echo service 10.0.2.1:7000, N bytes each way, checked;
 *  3. AF_VSOCK to CID 2 port 7001 (L1's vsock echo), 1 MiB each way, checked;
 *  4. the virtio interrupt counts (irqfd: no polling) and the negotiated net features.
 * Prints one line per step; exits 0 only when every check passed. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
    printf("nested-check: FAIL: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) fail(path);
    close(fd);
}

static int read_file(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return (int)n;
}

static unsigned char pattern(unsigned long long i) { return (unsigned char)(i * 131 + (i >> 9)); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Sends `total` pattern bytes on fd and reads them back, interleaved (the peer echoes). */
static void echo_check(int fd, unsigned long long total, const char *what) {
    static unsigned char buf[65536];
    unsigned long long sent = 0, got = 0;
    double t0 = now();
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (got < total) {
        struct pollfd p = {fd, POLLIN | (sent < total ? POLLOUT : 0), 0};
        if (poll(&p, 1, 30000) <= 0) { errno = ETIMEDOUT; fail(what); }
        if ((p.revents & POLLOUT) && sent < total) {
            size_t n = total - sent < sizeof buf ? total - sent : sizeof buf;
            for (size_t i = 0; i < n; i++) buf[i] = pattern(sent + i);
            ssize_t w = write(fd, buf, n);
            if (w < 0 && errno != EAGAIN) fail(what);
            if (w > 0) sent += w;
            if (sent == total) shutdown(fd, SHUT_WR);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r < 0 && errno != EAGAIN) fail(what);
            if (r == 0) { errno = EPIPE; fail(what); }
            for (ssize_t i = 0; i < r; i++)
                if (buf[i] != pattern(got + i)) {
                    printf("nested-check: FAIL: %s: byte %llu differs\n", what, got + i);
                    exit(1);
                }
            if (r > 0) got += r;
        }
    }
    double dt = now() - t0;
    printf("nested-check: %s: %llu bytes both ways, byte-exact, %.1f MB/s\n", what, total,
           total / dt / 1e6);
}

/* Unbinds and re-binds every virtio-mmio device whose virtio device id is `id`. */
static void rebind(unsigned id, const char *what) {
    DIR *d = opendir("/sys/bus/virtio/devices");
    if (!d) fail("/sys/bus/virtio/devices");
    struct dirent *e;
    int done = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[512], buf[512];
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
        if (read_file(path, buf, sizeof buf) < 0 || strtoul(buf, 0, 16) != id) continue;
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s", e->d_name);
        ssize_t n = readlink(path, buf, sizeof buf - 1);
        if (n < 0) fail(path);
        buf[n] = 0;
        char *slash = strrchr(buf, '/');
        if (!slash) fail("virtio device link");
        *slash = 0;
        char *parent = strrchr(buf, '/');
        parent = parent ? parent + 1 : buf;
        write_file("/sys/bus/platform/drivers/virtio-mmio/unbind", parent);
        write_file("/sys/bus/platform/drivers/virtio-mmio/bind", parent);
        printf("nested-check: re-bound %s (%s)\n", parent, what);
        done = 1;
        break;
    }
    closedir(d);
    if (!done) { errno = ENODEV; fail(what); }
}

static void net_up(const char *ifname) {
    char path[128];
    snprintf(path, sizeof path, "/sys/class/net/%s", ifname);
    for (int i = 0; access(path, F_OK) != 0; i++) {
        if (i > 500) { errno = ENODEV; fail(path); }
        usleep(20000);
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, "10.0.2.15", &a->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0) fail("SIOCSIFADDR");
    inet_pton(AF_INET, "255.255.255.0", &a->sin_addr);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) fail("SIOCSIFNETMASK");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) fail("SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) fail("SIOCSIFFLAGS");
    close(s);
}

static void print_features(unsigned id, const char *what) {
    DIR *d = opendir("/sys/bus/virtio/devices");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[512], buf[512];
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
        if (read_file(path, buf, sizeof buf) < 0 || strtoul(buf, 0, 16) != id) continue;
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/features", e->d_name);
        if (read_file(path, buf, sizeof buf) > 0)
            printf("nested-check: %s features %s", what, buf);
    }
    if (d) closedir(d);
}

int main(int argc, char **argv) {
    unsigned long long tcp_bytes = argc > 1 ? strtoull(argv[1], 0, 0) : 16ull << 20;
    unsigned long long vsock_bytes = argc > 2 ? strtoull(argv[2], 0, 0) : 1ull << 20;
    setvbuf(stdout, 0, _IOLBF, 0);
    if (tcp_bytes) {
        rebind(1, "net");
        rebind(19, "vsock");
        net_up("eth0");
        print_features(1, "net");
    }

    int s = -1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(7000)};
    inet_pton(AF_INET, "10.0.2.1", &sin.sin_addr);
    for (int i = 0; tcp_bytes; i++) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sin, sizeof sin) == 0) break;
        close(s);
        if (i > 100) fail("connect 10.0.2.1:7000");
        usleep(100000);
    }
    if (tcp_bytes) {
        echo_check(s, tcp_bytes, "tcp echo");
        close(s);
    }

    int v = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm svm = {.svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = 7001};
    if (connect(v, (struct sockaddr *)&svm, sizeof svm) < 0) fail("vsock connect 2:7001");
    echo_check(v, vsock_bytes, "vsock echo");
    close(v);

    char irq[16384];
    if (read_file("/proc/interrupts", irq, sizeof irq) < 0) fail("/proc/interrupts");
    for (char *line = strtok(irq, "\n"); line; line = strtok(0, "\n"))
        if (strstr(line, "virtio")) printf("nested-check: irq %s\n", line);
    printf("nested-check: ok\n");
    return 0;
}
