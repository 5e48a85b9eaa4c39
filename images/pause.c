/* The pod sandbox's process for images/realnode.py (registry.k8s.io/pause is unreachable here):
   holds the namespaces, reaps children, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int s) { (void)s; exit(0); }
static void sigreap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, sigdown); signal(SIGTERM, sigdown); signal(SIGCHLD, sigreap);
  for (;;) pause();
}
