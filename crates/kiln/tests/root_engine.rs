//! Root-only: `kiln engine` serves one state dir to several kiln processes
//! at once. They run concurrently (proved by the order of their events, not
//! by timing), share a step that runs once, and each gets its own results
//! and progress.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;

use common::{Env, run, text};
use kiln_testkit::poll_until;

const CLIENTS: usize = 5;

/// The host directory of the cache volume `key`, once it exists.
fn volume_dir(state: &Path, key: &str) -> Option<PathBuf> {
    std::fs::read_dir(state.join("volumes"))
        .ok()?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("key")).is_ok_and(|k| k == key))
        .map(|e| e.path().join("data"))
}

/// Stops the engine when the test ends, however it ends.
struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn root_clients_of_one_engine_run_at_once_and_share_work() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let state = env.dir().join("state");
    let engine = Engine(
        env.kiln(&["engine"])
            .stderr(Stdio::null())
            .spawn()
            .expect("kiln engine starts"),
    );
    poll_until("the engine listens", || state.join("engine.sock").exists());

    // The shared step waits for a gate the test opens once every client
    // was told it started: they all wait for it together.
    let gate = env.query("gate.graphql", r#"{ cacheVolume(key: "gate") { id } }"#);
    let out = run(env.kiln(&["query", gate.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gate_id = json["data"]["cacheVolume"]["id"].as_str().unwrap().to_string();
    let shared = "until [ -e /gate/open ]; do sleep 0.1; done; od -An -x -N8 /dev/urandom > /shared";

    let (lines_tx, lines_rx) = mpsc::channel::<(usize, String)>();
    let mut readers = Vec::new();
    let clients: Vec<Child> = (0..CLIENTS)
        .map(|i| {
            let query = format!(
                r#"{{ container {{ from(address: "busybox") {{ withMountedCache(path: "/gate", cache: "{gate_id}") {{
                    withExec(args: ["sh", "-c", {}]) {{
                    withExec(args: ["sh", "-c", "cat /shared; echo client-{i}"]) {{ stdout }} }} }} }} }} }}"#,
                serde_json::to_string(shared).unwrap()
            );
            let file = env.query(&format!("client-{i}.graphql"), &query);
            let mut child = env
                .kiln(&["--progress", "plain", "query", file.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kiln query starts");
            let stderr = child.stderr.take().unwrap();
            let tx = lines_tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send((i, line));
                }
            }));
            child
        })
        .collect();

    // Every client is told the shared step runs before it can finish.
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); CLIENTS];
    let started = |line: &str| line.contains("] RUN    exec sh -c 'until [ -e /gate/open ]");
    poll_until("every client waits for the shared step", || {
        while let Ok((i, line)) = lines_rx.try_recv() {
            seen[i].push(line);
        }
        seen.iter().all(|lines| lines.iter().any(|l| started(l)))
    });
    let gate_dir = volume_dir(&state, "gate").expect("the gate volume exists");
    std::fs::write(gate_dir.join("open"), "").unwrap();

    let mut shared_outputs = Vec::new();
    for (i, child) in clients.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "client {i}: {:#?}", seen[i]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let stdout = json["data"]["container"]["from"]["withMountedCache"]["withExec"]["withExec"]["stdout"]
            .as_str()
            .unwrap()
            .to_string();
        let (random, own) = stdout.split_once('\n').unwrap();
        assert_eq!(own, format!("client-{i}\n"), "each client's own environment");
        shared_outputs.push(random.to_string());
    }
    for reader in readers {
        reader.join().unwrap();
    }
    while let Ok((j, line)) = lines_rx.try_recv() {
        seen[j].push(line);
    }
    assert!(
        shared_outputs.iter().all(|o| o == &shared_outputs[0]),
        "the shared step ran once: {shared_outputs:?}"
    );
    for (i, lines) in seen.iter().enumerate() {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("] DONE   exec sh -c 'until [ -e /gate/open ]")),
            "client {i} is told the shared step finished: {lines:#?}"
        );
        // Each sees its own step, and no other client's.
        let own: Vec<&String> = lines.iter().filter(|l| l.contains("echo client-")).collect();
        assert!(!own.is_empty(), "client {i}: {lines:#?}");
        assert!(own.iter().all(|l| l.contains(&format!("client-{i}"))), "{own:#?}");
    }

    // The engine ends at SIGTERM and removes its socket.
    drop(engine);
    assert!(!state.join("engine.sock").exists());
}

/// Whether a process whose command line holds `marker` is alive.
fn alive(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
}

#[test]
fn root_a_killed_client_ends_its_session_and_no_other() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let state = env.dir().join("state");
    // Started by the first client, as users get it.
    let marker = "kiln-engine-test-killed-client";
    let hang = env.query(
        "hang.graphql",
        &common::exec_query(None, &format!("sleep 600; echo {marker}")),
    );
    let mut doomed = env
        .kiln(&["--progress", "plain", "query", hang.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiln query starts");
    poll_until("the doomed client's container runs", || alive(marker));

    // Another client, on the same engine, meanwhile.
    let other = env.query("other.graphql", &common::exec_query(None, "echo other"));
    let survivor = env
        .kiln(&["query", other.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln query starts");

    doomed.kill().unwrap();
    doomed.wait().unwrap();
    poll_until("the killed client's container is gone", || !alive(marker));

    let out = survivor.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("other"), "{}", text(&out.stdout));
    // The engine serves on: a third client works too.
    let out = run(env.kiln(&["query", other.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(state.join("engine.sock").exists());
}

#[test]
fn root_a_killed_engine_is_replaced_by_the_next_client_with_its_cache() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let state = env.dir().join("state");
    let step = env.query("step.graphql", &common::exec_query(None, "echo cached-across-engines"));
    let query = || run(env.kiln(&["--progress", "plain", "query", step.to_str().unwrap()]));
    let out = query();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("] DONE   exec sh -c 'echo cached-across-engines'"));

    let pid: i32 = std::fs::read_to_string(state.join("engine.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the engine our client started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    poll_until("the engine is gone", || !Path::new(&format!("/proc/{pid}")).exists());

    let out = query();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("] CACHED exec sh -c 'echo cached-across-engines'"),
        "{err}"
    );
    let new_pid: i32 = std::fs::read_to_string(state.join("engine.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, pid, "a new engine serves the state dir");
}

#[test]
fn root_engine_status_and_stop() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let state = env.dir().join("state");
    let out = run(env.kiln(&["engine", "status"]));
    assert_eq!(out.status.code(), Some(3), "no engine yet: {}", text(&out.stdout));
    assert!(text(&out.stdout).contains("no engine serves"), "{}", text(&out.stdout));

    let step = env.query("step.graphql", &common::exec_query(None, "echo status"));
    assert!(run(env.kiln(&["query", step.to_str().unwrap()])).status.success());
    let out = run(env.kiln(&["engine", "status"]));
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    let pid = std::fs::read_to_string(state.join("engine.lock")).unwrap();
    assert!(shown.contains(&format!("pid {}", pid.trim())), "{shown}");
    assert!(shown.contains("sessions   0"), "{shown}");

    let out = run(env.kiln(&["engine", "stop"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the engine is gone"
    );
    assert!(!state.join("engine.sock").exists());
    // The next client starts a new one.
    assert!(run(env.kiln(&["query", step.to_str().unwrap()])).status.success());
}

#[test]
fn root_registry_credentials_come_from_each_clients_own_docker_config() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let private = kiln_testkit::Registry::start_with_basic_auth("alice", "s3cret");
    private.push(&kiln_testkit::busybox_layout(), "private/busybox:latest");
    let reference = private.image_ref("private/busybox:latest");
    let query = env.query(
        "private.graphql",
        &format!(
            r#"{{ container {{ from(address: "{reference}") {{ withExec(args: ["echo", "in"]) {{ stdout }} }} }} }}"#
        ),
    );
    let with_creds = tempfile::tempdir().unwrap();
    let auth = kiln_testkit::basic_authorization("alice", "s3cret");
    let config = serde_json::json!({"auths": {private.host(): {"auth": auth.trim_start_matches("Basic ")}}});
    std::fs::write(with_creds.path().join("config.json"), config.to_string()).unwrap();
    let without = tempfile::tempdir().unwrap();

    // The engine is started by the client with credentials; the other
    // client, on the same engine, gets none of them.
    let query_with = |docker_config: &Path| {
        let mut cmd = env.kiln(&["query", query.to_str().unwrap()]);
        cmd.env("DOCKER_CONFIG", docker_config);
        run(cmd)
    };
    let out = query_with(with_creds.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("in\\n"), "{}", text(&out.stdout));
    let out = query_with(without.path());
    let shown = text(&out.stdout);
    assert!(shown.contains("credentials"), "{shown}");
}

#[test]
fn root_a_remote_engine_over_tls_takes_uploads_from_and_exports_to_its_client() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let state = env.dir().join("state");
    let netns = kiln_testkit::NetNs::new("10.231");
    let listen = format!("tcp://{}:0", netns.inner);
    let kiln = env.kiln(&["engine", "--listen", &listen]);
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &netns.name, env!("CARGO_BIN_EXE_kiln")])
        .args(kiln.get_args())
        .envs(kiln.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln engine starts in the namespace");
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _engine = Engine(child);
    let word = |prefix: &str| {
        let start = first.find(prefix).unwrap_or_else(|| panic!("{prefix} in {first}"));
        first[start..].split([' ', ';', ')']).next().unwrap().to_string()
    };
    let (addr, fingerprint) = (word("tcp://"), word("sha256:"));
    assert!(addr.starts_with(&format!("tcp://{}:", netns.inner)), "{addr}");
    let token_file = state.join("tls/token");
    let client_dir = tempfile::tempdir().unwrap();
    // No image: the namespace does not reach the test's loopback registry.
    let step = env.query(
        "remote.graphql",
        r#"{ directory { withNewFile(path: "a", contents: "from-afar") { file(path: "a") { contents } } } }"#,
    );
    let query = |fingerprint: &str, token: &str, file: &Path| {
        let mut cmd = env.kiln(&["query", file.to_str().unwrap()]);
        cmd.env("KILN_HOST", &addr)
            .env("KILN_TLS_FINGERPRINT", fingerprint)
            .env("KILN_TOKEN", token)
            // The client's own state dir is not used.
            .env("KILN_STATE_DIR", client_dir.path().join("unused"));
        run(cmd)
    };
    let token = std::fs::read_to_string(&token_file).unwrap();

    let out = query(&fingerprint, token.trim(), &step);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-afar"), "{}", text(&out.stdout));
    assert!(
        !client_dir.path().join("unused").exists(),
        "the client kept no state of its own"
    );

    let out = query(&fingerprint, "not-the-token-at-all", &step);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("wrong or missing engine token"),
        "{}",
        text(&out.stderr)
    );

    let other = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let out = query(other, token.trim(), &step);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not the pinned"), "{}", text(&out.stderr));

    // A host directory only the client sees (a tmpfs in its own mount
    // namespace) is uploaded through the connection; unchanged, nothing of
    // it is sent again; with one file changed, only that file.
    let only_here = tempfile::tempdir().unwrap();
    let dir = only_here.path().to_str().unwrap();
    let upload = env.query(
        "upload.graphql",
        &format!(r#"{{ host {{ directory(path: "{dir}") {{ file(path: "f.txt") {{ contents }} }} }} }}"#),
    );
    // A script run as a client in a mount namespace of its own (its
    // debug log says what it sent).
    let in_own_namespace = |script: &str| {
        let base = env.kiln(&[]);
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", script])
            .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
            .env("KILN_HOST", &addr)
            .env("KILN_TLS_FINGERPRINT", &fingerprint)
            .env("KILN_TOKEN", token.trim())
            .env("KILN_LOG", "kiln::engine::answers=debug");
        run(cmd)
    };
    let upload_from_client = |content: &str| {
        in_own_namespace(&format!(
            "mount -t tmpfs tmpfs {dir} && printf {content} > {dir}/f.txt && \
             head -c 1000 /dev/zero > {dir}/g.bin && exec {} query {}",
            env!("CARGO_BIN_EXE_kiln"),
            upload.display()
        ))
    };
    let out = upload_from_client("from-the-client");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-the-client"), "{}", text(&out.stdout));
    let sent = |out: &std::process::Output, what: &str| text(&out.stderr).contains(what);
    assert!(
        sent(&out, "pieces=2 bytes=1015"),
        "both went over: {}",
        text(&out.stderr)
    );
    let out = upload_from_client("from-the-client");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("from-the-client"), "{}", text(&out.stdout));
    assert!(
        !text(&out.stderr).contains("sent file contents"),
        "an unchanged tree sends no contents: {}",
        text(&out.stderr)
    );
    let out = upload_from_client("changed");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("changed"), "{}", text(&out.stdout));
    assert!(
        sent(&out, "pieces=1 bytes=7"),
        "only the change went over: {}",
        text(&out.stderr)
    );

    // Exports are written by the client, into its own mount namespace: a
    // directory (a subdirectory, an executable file, a file whose parent
    // is in the way) and a file.
    let export = env.query(
        "export.graphql",
        &format!(
            r#"{{
              d: directory {{ withNewFile(path: "x", contents: "y") {{
                   withNewFile(path: "bin/tool", contents: "run me", permissions: 493) {{
                     export(path: "{dir}/out") }} }} }}
              f: directory {{ withNewFile(path: "s", contents: "single") {{ file(path: "s") {{
                   export(path: "{dir}/deep/single.txt") }} }} }}
            }}"#
        ),
    );
    let out = in_own_namespace(&format!(
        "mount -t tmpfs tmpfs {dir} && mkdir {dir}/out && echo stale > {dir}/out/x && {} query {} && \
         cat {dir}/out/x {dir}/out/bin/tool {dir}/deep/single.txt && stat -c 'mode=%a' {dir}/out/bin/tool && \
         ls -A {dir}/out {dir}/deep",
        env!("CARGO_BIN_EXE_kiln"),
        export.display()
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("yrun mesingle"), "the files' contents: {shown}");
    assert!(shown.contains("mode=755"), "the tool's mode: {shown}");
    assert!(
        !shown.contains(".kiln-export"),
        "the client's staging directories are gone: {shown}"
    );
    assert_eq!(
        std::fs::read_dir(only_here.path()).unwrap().count(),
        0,
        "nothing was written outside the client's namespace"
    );
}

#[test]
fn root_an_engine_a_client_starts_keeps_none_of_its_environment() {
    if !kiln_testkit::require_root() {
        return;
    }
    let env = Env::new();
    let state = env.dir().join("state");
    let step = env.query("step.graphql", r#"{ version }"#);
    let mut cmd = env.kiln(&["query", step.to_str().unwrap()]);
    cmd.env("KILN_TEST_CLIENT_SECRET", "a-value-only-this-client-has");
    let out = run(cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = std::fs::read_to_string(state.join("engine.lock")).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", pid.trim())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("PATH="), "the engine keeps what it needs: {environ}");
    assert!(!environ.contains("a-value-only-this-client-has"), "{environ}");
}
