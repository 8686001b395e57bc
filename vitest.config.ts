import { defineConfig } from "vitest/config";

/**
 * Suites that run twice: on the API double (fast tier) and on the real control plane built from
 * tools/k8s (`STOWAGE_TEST_APISERVER=real`). They get their API through testkit/cluster.ts.
 */
const onBothApiServers = [
  "test/demo/demo.test.ts",
  "test/e2e/cacheAuth.test.ts",
  "test/e2e/cacheDown.test.ts",
  "test/e2e/cli.test.ts",
  "test/e2e/heartbeat.test.ts",
  "test/e2e/leaderElection.test.ts",
  "test/e2e/modelimage.test.ts",
  "test/e2e/namespaces.test.ts",
  "test/e2e/prewarm.test.ts",
  "test/e2e/restart.test.ts",
  "test/e2e/rbac-agent.test.ts",
  "test/e2e/rbac.test.ts",
  "test/e2e/rbac-webhook.test.ts",
  "test/kube/informer.test.ts",
  "test/kube/leaderElection.test.ts",
  "test/kube/manager.test.ts",
  "test/kube/fieldManager.test.ts",
  "test/kube/status.test.ts",
  "test/kube/trim.test.ts",
  "test/auth/pullSecrets.test.ts",
  "test/auth/ecr.test.ts",
  "test/controller/modelimage.test.ts",
  "test/controller/modelimage-failures.test.ts",
  "test/controller/modelimage-finalizer.test.ts",
  "test/controller/modelimage-hung-upstream.test.ts",
  "test/controller/modelimage-pull-secret.test.ts",
  "test/controller/prewarm-first-sync.test.ts",
  "test/controller/prewarm.test.ts",
  "test/controller/prewarm-integration.test.ts",
  "test/controller/prewarm-process.test.ts",
  "test/controller/prewarm-fanout.test.ts",
  "test/controller/gates.test.ts",
  "test/webhook/certificates.test.ts",
  "test/webhook/controller.test.ts",
  "test/webhook/childDigest.test.ts",
  "test/agent/agent.test.ts",
  "test/agent/command.test.ts",
  "test/agent/containerdConfig.test.ts",
  "test/agent/uninstall.test.ts",
  "test/agent/pullProgress.test.ts",
  "test/agent/pinning.test.ts",
  "test/status/status.test.ts",
  "test/api/nodeCache.test.ts",
  "test/argocd/examples.test.ts",
  "test/argocd/nodrift.test.ts",
  "test/api/kubectl.test.ts",
];

/** Only on the real control plane: the chart installed by the real helm, the differential test. */
const realOnly = ["test/real/**/*.test.ts"];

// Tests start real registries, containerd and API servers; they are I/O bound, so a small pool
// keeps a 2-core CI machine from thrashing.
export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default", "./test/support/summaryReporter.ts"],
    projects: [
      {
        extends: true,
        test: {
          name: "double",
          include: ["test/**/*.test.ts"],
          exclude: realOnly,
          env: { STOWAGE_TEST_APISERVER: "double" },
        },
      },
      {
        extends: true,
        test: {
          name: "real-k8s",
          include: [...onBothApiServers, ...realOnly],
          env: { STOWAGE_TEST_APISERVER: "real" },
          globalSetup: ["test/support/k8sBinaries.ts"],
          // A real control plane takes seconds to start on two cores, and its writes are slower.
          testTimeout: 120_000,
          hookTimeout: 180_000,
        },
      },
    ],
  },
});
