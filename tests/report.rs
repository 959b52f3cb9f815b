//! The HTML run report, rendered by a real headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it): it renders, every image decodes, nothing is logged to the console, and the
//! rendered page shows the Checker's and the oracle's verdict per prompt relation.

use std::path::Path;
use std::process::Command;

fn chromium() -> &'static str {
    let ok = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the report test needs Debian's chromium on the PATH (apt-get install chromium; .ci/run installs it)"
    );
    "chromium"
}

/// Renders a page headless; returns the final title, the console lines Chromium logged and the
/// rendered DOM.
fn render(page: &Path) -> (String, Vec<String>, String) {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or_default()
        .to_string();
    let console = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .map(str::to_string)
        .collect();
    (title, console, dom)
}

/// `[ok/total images]` from the title the report's script sets after loading.
fn images(title: &str) -> (usize, usize) {
    let inner = title.rsplit('[').next().unwrap().split(' ').next().unwrap();
    let (ok, total) = inner.split_once('/').unwrap();
    (ok.parse().unwrap(), total.parse().unwrap())
}

#[test]
fn the_report_renders_in_chromium_with_every_image_and_no_console_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rlrig"))
        .args([
            "run",
            "flows/infer-baseline.toml",
            "--set",
            "prompts.count=6",
            "--set",
            &format!("run_dir={}", tmp.path().display()),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = tmp.path().join("infer-baseline/report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("Oracle metrics") && html.contains("score "),
        "metrics and reflections"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "self-contained"
    );

    let (title, console, dom) = render(&page);
    let (ok, total) = images(&title);
    assert!(total >= 6, "at least one image per prompt: {title}");
    assert_eq!(ok, total, "every image decodes: {title}");
    assert!(console.is_empty(), "console: {console:#?}");
    // The Checker's verdict beside the oracle's, per prompt relation, marked held or violated.
    assert!(
        dom.contains("<th>relation</th><th>Checker</th><th>oracle</th>"),
        "relation tables with both judges' columns in the rendered page"
    );
    assert!(
        dom.contains("title=\"held\">✓</td>") || dom.contains("title=\"violated\">✗</td>"),
        "held/violated marks in the rendered page"
    );
    assert!(
        !dom.contains("Some("),
        "no Rust debug text in the rendered page"
    );

    // The checks can fail: a broken image and a script error are seen.
    let broken = tmp.path().join("broken.html");
    std::fs::write(
        &broken,
        html.replacen("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
            .replacen("<body>", "<body><script>undefinedFunction();</script>", 1),
    )
    .unwrap();
    let (title, console, _) = render(&broken);
    let (ok, total) = images(&title);
    assert_eq!(ok + 1, total, "{title}");
    assert!(
        console.iter().any(|l| l.contains("Uncaught")),
        "{console:#?}"
    );
}
