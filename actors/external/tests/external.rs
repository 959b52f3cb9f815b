//! External actors on real child processes: the Python checker of `examples/`, the scriptable
//! `tests/echo_actor.py`, and inline Python that crashes, hangs or says the wrong hello.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rlrig_contract::{
    CheckReport, CheckRequest, Checker, Diffuser, EditPolicy, EditRequest, Editor, GenerateRequest,
    Image, ItemVerdict, ProposeRequest, RelationVerdict, Role, SceneGraph,
};
use rlrig_external::{ExternalActor, ExternalConfig, ExternalError, ExternalErrorKind};
use rlrig_world::{Canvas, Colour, Object, Rel, Shape, WorldGraph, sample};

/// The repository root, where `examples/` lives.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A config that runs `args` in the repository root.
fn config(args: &[&str]) -> ExternalConfig {
    ExternalConfig {
        cwd: Some(root()),
        ..ExternalConfig::new(args.iter().copied())
    }
}

fn python_checker() -> ExternalActor {
    ExternalActor::spawn(
        "py-checker",
        Role::Checker,
        &config(&["python3", "examples/external_checker.py"]),
    )
    .expect("the example checker starts")
}

fn echo(role: &str, mode: &str) -> ExternalConfig {
    config(&["python3", "actors/external/tests/echo_actor.py", role, mode])
}

fn spawn_err(name: &str, role: Role, config: &ExternalConfig) -> ExternalError {
    ExternalActor::spawn(name, role, config).expect_err("spawn must fail")
}

/// Whether a process with this id exists (a reaped child does not).
fn process_exists(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill runs")
        .success()
}

fn obj(colour: Colour, shape: Shape) -> Object {
    Object { colour, shape }
}

fn graph(objects: &[(Colour, Shape)], relations: &[(usize, Rel, usize)]) -> SceneGraph {
    WorldGraph {
        objects: objects
            .iter()
            .map(|&(colour, shape)| obj(colour, shape))
            .collect(),
        relations: relations.to_vec(),
    }
    .to_scene_graph()
}

fn report() -> CheckReport {
    CheckReport {
        items: vec![ItemVerdict::Present],
        relations: vec![],
        score: 1.0,
        reflection: "all good".into(),
        graph: None,
        estimates: None,
    }
}

#[test]
fn python_checker_scores_correct_drawings_one_and_blank_canvases_zero() {
    let mut checker = python_checker();
    let mut batch = Vec::new();
    for (size, n) in [(32, 24), (64, 6)] {
        let canvas = Canvas::new(size).unwrap();
        for i in 0..n {
            let s = sample(&canvas, 7, i);
            batch.push(CheckRequest {
                prompt: s.graph,
                image: s.image,
            });
        }
    }
    let reports = checker.check(&batch).unwrap();
    assert_eq!(reports.len(), batch.len());
    for (req, r) in batch.iter().zip(&reports) {
        assert_eq!(r.score, 1.0, "{} -> {r:?}", req.prompt.prompt());
        assert!(r.items.iter().all(|v| *v == ItemVerdict::Present));
        assert_eq!(r.relations.len(), req.prompt.relations.len());
        assert!(r.relations.iter().all(|v| *v == RelationVerdict::Holds));
        assert_eq!(
            r.reflection,
            "every item is present and every relation holds"
        );
    }

    // A second batch on the same process: blank canvases.
    let blank: Vec<CheckRequest> = batch[..3]
        .iter()
        .map(|r| CheckRequest {
            prompt: r.prompt.clone(),
            image: Image::filled(32, 32, [255, 255, 255]),
        })
        .collect();
    for (req, r) in blank.iter().zip(checker.check(&blank).unwrap()) {
        assert_eq!(r.score, 0.0);
        assert_eq!(r.items, vec![ItemVerdict::Missing; req.prompt.items.len()]);
        assert_eq!(
            r.relations,
            vec![RelationVerdict::CannotTell; req.prompt.relations.len()]
        );
        assert!(r.reflection.contains("is missing"), "{}", r.reflection);
    }
    assert!(checker.is_alive());
}

#[test]
fn python_checker_finds_violations_and_missing_items() {
    let canvas = Canvas::new(32).unwrap();
    // Red circle left of a red square, a blue triangle below both; no green object.
    let image = canvas.draw(&[
        canvas.place_at(obj(Colour::Red, Shape::Circle), 0, 0),
        canvas.place_at(obj(Colour::Red, Shape::Square), 3, 0),
        canvas.place_at(obj(Colour::Blue, Shape::Triangle), 1, 3),
    ]);
    use {Colour::*, Rel::*, Shape::*};
    let prompt = graph(
        &[
            (Red, Square),
            (Red, Circle),
            (Blue, Triangle),
            (Green, Circle),
        ],
        &[
            (0, LeftOf, 1), // violated: the square is right of the circle
            (2, Below, 0),  // holds
            (3, Above, 2),  // cannot tell: the green circle is missing
        ],
    );
    let mut checker = python_checker();
    let r = checker
        .check(&[CheckRequest { prompt, image }])
        .unwrap()
        .remove(0);
    use ItemVerdict::*;
    use RelationVerdict::*;
    assert_eq!(r.items, vec![Present, Present, Present, Missing]);
    assert_eq!(r.relations, vec![Violated, Holds, CannotTell]);
    assert_eq!(r.score, 4.0 / 7.0);
    for part in [
        "the green circle is missing",
        "the red square is right of the red circle, not left of it",
        "cannot tell whether the green circle is above the blue triangle",
    ] {
        assert!(
            r.reflection.contains(part),
            "{part:?} not in {:?}",
            r.reflection
        );
    }
}

#[test]
fn python_checker_flags_a_reversed_relation_in_a_sampled_scene() {
    let canvas = Canvas::new(32).unwrap();
    let s = (0..)
        .map(|i| sample(&canvas, 11, i))
        .find(|s| !s.graph.relations.is_empty())
        .unwrap();
    let mut prompt = s.graph.clone();
    let r0 = &mut prompt.relations[0];
    std::mem::swap(&mut r0.item1, &mut r0.item2);
    let r = python_checker()
        .check(&[CheckRequest {
            prompt: prompt.clone(),
            image: s.image,
        }])
        .unwrap()
        .remove(0);
    assert_eq!(r.relations[0], RelationVerdict::Violated);
    let asked = (prompt.items.len() + prompt.relations.len()) as f64;
    assert_eq!(r.score, (asked - 1.0) / asked);
}

#[test]
fn every_role_round_trips_through_its_wire_form() {
    let prompt = graph(&[(Colour::Red, Shape::Circle)], &[]);

    let mut diffuser =
        ExternalActor::spawn("echo-d", Role::Diffuser, &echo("diffuser", "")).unwrap();
    let images = diffuser
        .generate(&[
            GenerateRequest {
                prompt: prompt.clone(),
                seed: 1,
                explore: false,
            },
            GenerateRequest {
                prompt: prompt.clone(),
                seed: 258,
                explore: false,
            },
        ])
        .unwrap();
    assert_eq!(
        images,
        vec![
            Image::filled(5, 3, [1, 1, 7]),
            Image::filled(6, 3, [2, 1, 7])
        ]
    );

    let mut editor = ExternalActor::spawn("echo-e", Role::Editor, &echo("editor", "")).unwrap();
    let mut picture = Image::filled(9, 4, [255, 255, 255]);
    picture.put(8, 3, [40, 90, 220]);
    let edit = EditRequest {
        explore: false,
        image: picture.clone(),
        edit_prompt: "move it".into(),
        seed: 3,
    };
    assert_eq!(editor.edit(&[edit]).unwrap(), vec![picture.clone()]);

    let mut cfg = echo("policy", "");
    cfg.env.insert("RLRIG_TEST_TAG".into(), "tag-42".into());
    cfg.cwd = Some(root().join("actors"));
    cfg.command[1] = "external/tests/echo_actor.py".into();
    let mut policy = ExternalActor::spawn("echo-p", Role::Policy, &cfg).unwrap();
    let proposal = policy
        .propose(&[ProposeRequest {
            prompt: prompt.clone(),
            image: picture,
            report: report(),
            seed: 9,
        }])
        .unwrap()
        .remove(0);
    assert_eq!(proposal.edit_prompt, "fix: all good [tag-42@actors]");
    assert_eq!(
        (proposal.token_ids, proposal.logprobs),
        (vec![1, 2], vec![-0.5, -1.0])
    );
    assert_eq!(proposal.policy_version, 9);

    // An empty batch needs no round trip.
    assert_eq!(diffuser.generate(&[]).unwrap(), vec![]);
}

#[test]
fn garbage_is_a_malformed_reply_naming_the_actor_and_the_actor_stays_dead() {
    let mut actor = ExternalActor::spawn(
        "garbage",
        Role::Checker,
        &config(&["python3", "examples/external_garbage.py"]),
    )
    .unwrap();
    let pid = actor.pid().unwrap();
    let req = CheckRequest {
        prompt: graph(&[(Colour::Red, Shape::Circle)], &[]),
        image: Image::filled(32, 32, [255, 255, 255]),
    };
    let e = actor.check(std::slice::from_ref(&req)).unwrap_err().0;
    assert_eq!(
        e,
        r#"external actor "garbage" (python3 examples/external_garbage.py): malformed reply line 2: expected JSON {"id", "results"|"error"}, got: hello world"#
    );
    assert!(!actor.is_alive());
    assert!(!process_exists(pid), "the garbage process was killed");
    assert!(matches!(
        actor.failure().map(|f| &f.kind),
        Some(ExternalErrorKind::Malformed {
            what: "reply",
            line: 2,
            ..
        })
    ));

    let started = Instant::now();
    let again = actor.check(&[req]).unwrap_err().0;
    assert!(started.elapsed() < Duration::from_millis(50), "fails fast");
    assert_eq!(
        again,
        r#"external actor "garbage" (python3 examples/external_garbage.py): dead since an earlier failure (spawn a new one); that failure: malformed reply line 2: expected JSON {"id", "results"|"error"}, got: hello world"#
    );
}

#[test]
fn a_hang_times_out_within_the_timeout_and_the_child_is_gone() {
    let hang = r#"import time; print('{"protocol": "rlrig-actor/1", "role": "checker"}', flush=True); time.sleep(60)"#;
    let mut cfg = config(&["python3", "-c", hang]);
    cfg.timeout_ms = 500;
    let mut actor = ExternalActor::spawn("sleeper", Role::Checker, &cfg).unwrap();
    let pid = actor.pid().unwrap();
    let started = Instant::now();
    let e = actor
        .check(&[CheckRequest {
            prompt: graph(&[(Colour::Red, Shape::Circle)], &[]),
            image: Image::filled(8, 8, [0, 0, 0]),
        }])
        .unwrap_err()
        .0;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    assert!(
        e.starts_with(r#"external actor "sleeper" (python3 -c "import time; "#),
        "{e}"
    );
    assert!(
        e.ends_with(
            ": timed out after 500 ms waiting for the reply to batch 1; the process was killed"
        ),
        "{e}"
    );
    assert!(
        !process_exists(pid),
        "the sleeping process was killed and reaped"
    );
    assert!(!actor.is_alive());
}

#[test]
fn a_silent_process_times_out_at_startup() {
    let mut cfg = config(&["python3", "-c", "import time; time.sleep(60)"]);
    cfg.startup_timeout_ms = 500;
    let started = Instant::now();
    let e = spawn_err("mute", Role::Checker, &cfg);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        e.to_string(),
        r#"external actor "mute" (python3 -c "import time; time.sleep(60)"): timed out after 500 ms waiting for the hello; the process was killed"#
    );
}

#[test]
fn a_process_that_exits_at_once_reports_its_status_and_stderr() {
    let cfg = config(&[
        "python3",
        "-c",
        "import sys; print('no model here', file=sys.stderr); sys.exit(3)",
    ]);
    let e = spawn_err("quitter", Role::Checker, &cfg);
    assert_eq!(
        e.to_string(),
        concat!(
            r#"external actor "quitter" (python3 -c "import sys; print('no model here', file=sys.stderr); sys.exit(3)"): "#,
            "the process exited (exit status: 3) while rlrig waited for the hello; last lines of its stderr:\n  | no model here"
        )
    );
    let e = spawn_err(
        "silent-quitter",
        Role::Checker,
        &config(&["python3", "-c", "pass"]),
    );
    assert!(
        e.to_string().ends_with("the process exited (exit status: 0) while rlrig waited for the hello; its stderr was empty"),
        "{e}"
    );
}

#[test]
fn a_crash_during_a_batch_reports_status_and_stderr_and_kills_the_actor() {
    let mut actor =
        ExternalActor::spawn("crasher", Role::Checker, &echo("checker", "--crash")).unwrap();
    let req = CheckRequest {
        prompt: graph(&[(Colour::Red, Shape::Circle)], &[]),
        image: Image::filled(4, 4, [0, 0, 0]),
    };
    let e = actor.check(std::slice::from_ref(&req)).unwrap_err().0;
    assert!(
        e.starts_with(r#"external actor "crasher" (python3 actors/external/tests/echo_actor.py checker --crash): "#),
        "{e}"
    );
    assert!(
        e.ends_with(
            "the process exited (exit status: 5) while rlrig waited for the reply to batch 1; \
             last lines of its stderr:\n  | loading the model\n  | boom: the model crashed"
        ),
        "{e}"
    );
    assert!(
        actor
            .check(&[req])
            .unwrap_err()
            .0
            .contains("dead since an earlier failure")
    );
}

#[test]
fn a_missing_program_is_named() {
    let e = spawn_err(
        "ghost",
        Role::Checker,
        &config(&["rlrig-no-such-program", "--flag"]),
    );
    assert_eq!(
        e.to_string(),
        r#"external actor "ghost" (rlrig-no-such-program --flag): cannot start "rlrig-no-such-program": not found (is it installed and on the PATH?)"#
    );
    assert!(matches!(e.kind, ExternalErrorKind::Spawn { .. }));
}

#[test]
fn wrong_hellos_are_refused() {
    let e = spawn_err("policy-as-checker", Role::Checker, &echo("policy", ""));
    assert!(
        e.to_string()
            .ends_with(r#": its hello declares role "policy", but it was started as a checker"#),
        "{e}"
    );
    let v2 = r#"print('{"protocol": "rlrig-actor/2", "role": "checker"}', flush=True)"#;
    let e = spawn_err("future", Role::Checker, &config(&["python3", "-c", v2]));
    assert!(
        e.to_string().ends_with(
            r#": its hello speaks protocol "rlrig-actor/2", but rlrig speaks "rlrig-actor/1""#
        ),
        "{e}"
    );
    let e = spawn_err(
        "chatty",
        Role::Editor,
        &config(&["python3", "-c", "print(); print('ready', flush=True)"]),
    );
    assert_eq!(
        e.to_string(),
        r#"external actor "chatty" (python3 -c "print(); print('ready', flush=True)"): malformed hello line 2: expected JSON {"protocol": "rlrig-actor/1", "role": "editor"}, got: ready"#
    );
}

#[test]
fn protocol_violations_in_replies_are_fatal() {
    let req = CheckRequest {
        prompt: graph(
            &[(Colour::Red, Shape::Circle), (Colour::Blue, Shape::Square)],
            &[(0, Rel::LeftOf, 1)],
        ),
        image: Image::filled(4, 4, [0, 0, 0]),
    };
    let cases = [
        (
            "--wrong-id",
            "reply line 2 answers batch 2, but rlrig waits for batch 1".to_owned(),
        ),
        (
            "--too-few",
            "reply line 2 to batch 1 has 1 results for 2 requests".to_owned(),
        ),
        (
            "--bad-lengths",
            "malformed reply line 2: expected results[0] to have 2 item and 1 relation verdicts \
             (one per prompt item and relation), but it has 0 and 0, got: "
                .to_owned(),
        ),
    ];
    for (mode, want) in cases {
        let mut actor =
            ExternalActor::spawn("echo", Role::Checker, &echo("checker", mode)).unwrap();
        let e = actor.check(&[req.clone(), req.clone()]).unwrap_err().0;
        assert!(e.contains(&want), "{mode}: {e}");
        assert!(!actor.is_alive(), "{mode}");
    }

    let mut diffuser =
        ExternalActor::spawn("echo", Role::Diffuser, &echo("diffuser", "--bad-image")).unwrap();
    let e = diffuser
        .generate(&[GenerateRequest {
            prompt: req.prompt.clone(),
            seed: 0,
            explore: false,
        }])
        .unwrap_err()
        .0;
    assert!(
        e.contains("malformed reply line 2: expected results[0] to be a valid image (png_base64 is not valid base64: "),
        "{e}"
    );
}

#[test]
fn batch_errors_and_wrong_roles_fail_one_call_only() {
    let mut actor =
        ExternalActor::spawn("flaky", Role::Checker, &echo("checker", "--error-first")).unwrap();
    let req = CheckRequest {
        prompt: graph(&[(Colour::Red, Shape::Circle)], &[]),
        image: Image::filled(4, 4, [0, 0, 0]),
    };
    let e = actor.check(std::slice::from_ref(&req)).unwrap_err().0;
    assert!(
        e.ends_with(": the process failed batch 1: model not loaded"),
        "{e}"
    );
    assert!(actor.is_alive());

    let e = actor
        .generate(&[GenerateRequest {
            prompt: req.prompt.clone(),
            seed: 0,
            explore: false,
        }])
        .unwrap_err()
        .0;
    assert!(
        e.ends_with(": it runs as a checker, so it cannot serve as a diffuser"),
        "{e}"
    );
    assert!(
        actor.propose(&[]).is_err(),
        "the role is checked even for an empty batch"
    );

    let r = actor.check(&[req]).unwrap();
    assert_eq!(r[0].items, vec![ItemVerdict::Present]);
}

#[test]
fn drop_closes_stdin_and_kills_a_process_that_stays() {
    let actor = python_checker();
    let pid = actor.pid().unwrap();
    let started = Instant::now();
    drop(actor);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a polite process exits on EOF"
    );
    assert!(!process_exists(pid));

    let actor =
        ExternalActor::spawn("stayer", Role::Checker, &echo("checker", "--ignore-eof")).unwrap();
    let pid = actor.pid().unwrap();
    let started = Instant::now();
    drop(actor);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!process_exists(pid), "killed after the grace period");
}

#[test]
fn configs_that_cannot_work_are_refused_before_starting() {
    let e = spawn_err(
        "empty",
        Role::Checker,
        &ExternalConfig::new(Vec::<String>::new()),
    );
    assert_eq!(
        e.to_string(),
        r#"external actor "empty" (no command): bad config: the command is empty; give the program and its arguments, e.g. ["python3", "checker.py"]"#
    );
    let mut cfg = config(&["python3"]);
    cfg.timeout_ms = 0;
    assert!(
        spawn_err("zero", Role::Checker, &cfg)
            .to_string()
            .contains("must be positive")
    );
    let mut cfg = config(&["python3"]);
    cfg.cwd = Some(root().join("no-such-directory"));
    assert!(
        spawn_err("lost", Role::Checker, &cfg)
            .to_string()
            .contains("is not a directory")
    );
    assert_eq!(
        spawn_err("trainer", Role::Trainer, &config(&["python3"])).kind,
        ExternalErrorKind::UnsupportedRole(Role::Trainer)
    );
}

#[test]
fn actors_can_move_to_other_threads() {
    fn is_send<T: Send>() {}
    is_send::<ExternalActor>();
}

#[test]
fn python_checker_answers_a_broken_request_with_an_error_and_carries_on() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let mut child = Command::new("python3")
        .arg("examples/external_checker.py")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prompt = serde_json::to_string(&graph(&[(Colour::Red, Shape::Circle)], &[])).unwrap();
    let image = r#"{"width": 1, "height": 1, "png_base64": "bm90IGEgcG5n"}"#;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        r#"{{"id": 5, "role": "checker", "batch": [{{"prompt": {prompt}, "image": {image}}}]}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"id": 6, "role": "checker", "batch": []}}"#).unwrap();
    drop(stdin);
    let lines: Vec<serde_json::Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(lines[0]["protocol"], "rlrig-actor/1");
    assert_eq!(lines[1]["id"], 5);
    assert_eq!(lines[1]["error"], "ValueError: not a PNG: bad signature");
    assert_eq!(lines[2], serde_json::json!({"id": 6, "results": []}));
}

#[test]
fn a_process_that_closes_stdout_but_stays_is_killed() {
    let cfg = config(&[
        "python3",
        "-c",
        "import os, time; os.close(1); time.sleep(30)",
    ]);
    let started = Instant::now();
    let e = spawn_err("closer", Role::Checker, &cfg);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        e.kind,
        ExternalErrorKind::ClosedStdout {
            during: "the hello".into()
        }
    );
    assert!(
        e.to_string().ends_with(
            ": the process closed its stdout while rlrig waited for the hello, but kept running; it was killed"
        ),
        "{e}"
    );
}
