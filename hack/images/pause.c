/*
 * The pod sandbox's first process: it holds the pod's namespaces open,
 * reaps the zombies that end up with it, and exits on SIGINT or SIGTERM.
 * Built static (gcc -static) into the local pause image by hack/images.sh.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) { (void)sig; stop = 1; }

static void on_child(int sig) {
  (void)sig;
  int saved = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(void) {
  if (getpid() != 1) {
    fprintf(stderr, "pause: not pid 1; a sandbox's pause runs as its init\n");
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_stop;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &sa, NULL);
  while (!stop) {
    pause();
  }
  return 0;
}
