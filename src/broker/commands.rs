//! Commands arriving over MQTT (`printgate/<printer>/cmd/<kind>`), as a typed channel for the
//! part of the gateway that executes them through the dispatcher and the safety rules, and the
//! answers that go back on `…/cmd/<kind>/result`.

use crate::broker::topics::{self, CommandKind, CommandResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One command for the executor. Answer exactly once on `reply` (dropping it answers
/// "not executed").
#[derive(Debug)]
pub struct BrokerCommand {
    /// Configured printer name.
    pub printer: String,
    pub kind: CommandKind,
    /// `light`/`power`: on or off.
    pub on: Option<bool>,
    /// Who sent it: broker user name, `token:<name>`, or `external` (external broker mode).
    pub user: String,
    pub reply: oneshot::Sender<CommandResult>,
}

/// How long the executor may take before the result says "no answer".
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Routes parsed commands to the executor and publishes results through `results`.
#[derive(Clone)]
pub struct CommandRouter {
    executor: Option<mpsc::Sender<BrokerCommand>>,
    /// Topic id → configured printer name.
    printers: Arc<HashMap<String, String>>,
    results: mpsc::Sender<(String, CommandResult)>,
    /// The gateway's topic tree (results go back into it).
    tree: topics::Tree,
}

impl CommandRouter {
    /// Answer into this tree (a fleet gateway's `printgate/<gateway>/…`).
    pub fn with_tree(mut self, tree: topics::Tree) -> Self {
        self.tree = tree;
        self
    }

    pub fn new(
        executor: Option<mpsc::Sender<BrokerCommand>>,
        printers: HashMap<String, String>,
        results: mpsc::Sender<(String, CommandResult)>,
    ) -> Self {
        CommandRouter {
            executor,
            printers: Arc::new(printers),
            results,
            tree: topics::Tree::default(),
        }
    }

    /// Handle one command publish; the result is published asynchronously.
    pub fn submit(&self, topic_id: &str, kind: CommandKind, payload: &[u8], user: &str) {
        let result_topic = self.tree.cmd_result(topic_id, kind);
        let answer = |r: CommandResult| {
            let _ = self.results.try_send((result_topic.clone(), r));
        };
        let parsed = match topics::parse_cmd_payload(kind, payload) {
            Ok(p) => p,
            Err(e) => {
                return answer(CommandResult {
                    ok: false,
                    message: e.to_string(),
                    id: None,
                });
            }
        };
        let id = parsed.id.clone();
        let fail = |message: String| CommandResult {
            ok: false,
            message,
            id: id.clone(),
        };
        let Some(printer) = self.printers.get(topic_id) else {
            return answer(fail(format!(
                "no printer with topic name {topic_id:?}; see printgate/+/state for the names"
            )));
        };
        let Some(executor) = &self.executor else {
            return answer(fail(
                "commands over MQTT are not available in this printgate build yet; use the web interface".into(),
            ));
        };
        let (reply, rx) = oneshot::channel();
        let cmd = BrokerCommand {
            printer: printer.clone(),
            kind,
            on: parsed.on,
            user: user.to_string(),
            reply,
        };
        if executor.try_send(cmd).is_err() {
            return answer(fail(
                "the gateway is busy with other commands; nothing was done, try again".into(),
            ));
        }
        tracing::info!(printer = %printer, kind = kind.as_str(), user, "MQTT command accepted");
        let results = self.results.clone();
        tokio::spawn(async move {
            let r = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
                Ok(Ok(mut r)) => {
                    r.id = id;
                    r
                }
                Ok(Err(_)) => CommandResult {
                    ok: false,
                    message: "the command was not executed".into(),
                    id,
                },
                Err(_) => CommandResult {
                    ok: false,
                    message: "no answer within 30 s; check the printer's state before retrying"
                        .into(),
                    id,
                },
            };
            let _ = results.send((result_topic, r)).await;
        });
    }
}
