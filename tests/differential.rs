//! Differential test: what real application routers make of what tokengate forwards.
//!
//! The image app's route table is implemented in Flask/Werkzeug, Express 4, Express 5 and Rails'
//! own router on Puma (with `Rack::MethodOverride`, as a default Rails stack has it), each
//! running behind tokengate in turn. Each app says in `X-Served` which route and album it
//! served. A corpus of several hundred spellings of requests aimed at albums and abilities the
//! token does not grant is sent through tokengate: every request an app served on a protected
//! route must be for an album and ability the token grants, and every spelling of the token
//! path must be answered by tokengate itself, never forwarded.
//!
//! The corpus runs on every protocol a listener speaks: HTTP/1.1, h2c and HTTP/2 over TLS, one
//! tokengate serving all three. Every body case is sent with its length, without one (chunked;
//! on HTTP/2 DATA frames without `content-length`, also one byte a frame) and without a body.

mod common;

use common::corpus::*;
use common::wire::{EveryProtocol, Protocol, PROTOCOLS};
use common::*;

struct Outcome {
    protocol: Protocol,
    corpus: usize,
    disagreements: Vec<String>,
    served: usize,
    unanswered: Vec<String>,
}

/// Runs the corpus through `gate` over `protocol`.
fn run_over(
    app: &App,
    gate: &EveryProtocol,
    protocol: Protocol,
    token: &str,
    session: &str,
) -> Outcome {
    let bearer = format!("Bearer {token}");
    // Controls: what the token does grant is served, so the harness can tell served from not.
    let controls = [
        (Request::new("POST", "/albums/a/images"), ("upload", "a")),
        (Request::new("GET", "/albums/a"), ("album", "a")),
        (Request::new("HEAD", "/albums/a"), ("album", "a")),
    ];
    for (req, want) in controls {
        let (method, target) = (req.method, req.target);
        let answer = gate.send(protocol, &req.header("Authorization", &bearer).wire());
        assert_eq!(
            (answer.status, served_by(&answer)),
            (Some(200), Some((want.0.to_owned(), want.1.to_owned()))),
            "{} over {}: control {method} {target}: {answer:?}",
            app.name,
            protocol.name(),
        );
    }

    let cases = corpus(token, session);
    let tag = protocol.name().replace([' ', '/'], "-");
    let mut sent: Vec<(String, bool, String)> = Vec::new();
    let mut requests = Vec::new();
    for case in &cases {
        for (label, req) in variants(case, protocol) {
            let id = format!("diff-{tag}-{}", sent.len());
            requests.push(req.header("X-Request-Id", &id));
            sent.push((label, case.token_path, id));
        }
    }
    let answers = gate.send_all(protocol, &requests);
    let mut disagreements = Vec::new();
    let mut served_count = 0;
    let mut unanswered = Vec::new();
    for ((label, _, _), answer) in sent.iter().zip(&answers) {
        if !answer.answered() {
            unanswered.push(format!("{label}: {:?}", answer.error));
            continue;
        }
        let Some((route, album)) = served_by(answer) else {
            continue;
        };
        served_count += 1;
        let granted = ability(&route).is_some_and(|ab| GRANTED.contains(&(album.as_str(), ab)));
        if !granted {
            disagreements.push(format!(
                "{} over {}: {label} → {:?}, app served {route} on album {album:?}",
                app.name,
                protocol.name(),
                answer.status
            ));
        }
    }
    // The token path, in every spelling, never reached the app: its access-log line shows no
    // upstream contact (or there is none: the HTTP parser refused it outright).
    let lines = gate.tg.access_log(1);
    for (label, _, id) in sent.iter().filter(|(_, token_path, _)| *token_path) {
        let tag = format!("\"request_id\":\"{id}\"");
        if let Some(line) = lines.iter().find(|l| l.contains(&tag)) {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            if !entry["upstream_duration"].is_null() {
                disagreements.push(format!(
                    "{} over {}: {label} was forwarded to the app",
                    app.name,
                    protocol.name()
                ));
            }
        }
    }
    Outcome {
        protocol,
        corpus: sent.len(),
        disagreements,
        served: served_count,
        unanswered,
    }
}

/// Runs the corpus through one tokengate in front of `app`, over every protocol.
fn run_against(app: &App) -> Vec<Outcome> {
    let gate = EveryProtocol::start(
        &format!("diff-{}", app.name),
        app.addr,
        ROUTES,
        &[("TOKENGATE_ACCESS_LOG", "true")],
    );
    let session = session("diff");
    let minted = gate.tg.request(&token_request(
        &[&format!("Bearer {session}")],
        Some("application/json"),
        r#"{"permission":{"abilities":{"a":{"Access":{"see":true,"image_upload":true}}}}}"#,
    ));
    assert_eq!(minted.status, 200, "{}", minted.text());
    let token = minted.json()["token"].as_str().unwrap().to_owned();
    let outcomes = PROTOCOLS
        .iter()
        .map(|&protocol| run_over(app, &gate, protocol, &token, &session))
        .collect();
    gate.tg.assert_no_panic();
    outcomes
}

fn check(app: App) {
    let outcomes = run_against(&app);
    for outcome in &outcomes {
        println!(
            "{} over {}: corpus {} requests, {} served by the app, {} unanswered, disagreements {}",
            app.name,
            outcome.protocol.name(),
            outcome.corpus,
            outcome.served,
            outcome.unanswered.len(),
            outcome.disagreements.len()
        );
    }
    for outcome in outcomes {
        assert!(outcome.corpus >= 300, "corpus of {} only", outcome.corpus);
        assert!(
            outcome.unanswered.is_empty(),
            "{} over {}: requests without an answer:\n{}",
            app.name,
            outcome.protocol.name(),
            outcome.unanswered.join("\n")
        );
        assert!(
            outcome.disagreements.is_empty(),
            "{} disagreements:\n{}",
            outcome.disagreements.len(),
            outcome.disagreements.join("\n")
        );
    }
}

#[test]
fn flask_serves_only_what_the_token_grants() {
    check(App::start("flask", "python3", &["flask_app.py"]));
}

#[test]
fn express_4_serves_only_what_the_token_grants() {
    check(App::start(
        "express4",
        "node",
        &["express_app.js", "express4"],
    ));
}

#[test]
fn express_5_serves_only_what_the_token_grants() {
    check(App::start(
        "express5",
        "node",
        &["express_app.js", "express5"],
    ));
}

#[test]
fn rails_serves_only_what_the_token_grants() {
    check(App::start("rails", "ruby", &["rails_app.rb"]));
}
