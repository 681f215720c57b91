//! Failover across `;`-separated URLs, and passwords kept out of every message.

use std::sync::Arc;

use async_trait::async_trait;
use kombu_core::transport::{BrokerConnection, Transport};
use kombu_core::{BrokerUrl, Connection, Error, ErrorKind, Result};

/// A broker that always refuses, recoverably (`down://`) or for good (`denied://`).
#[derive(Debug)]
struct Refusing {
    scheme: &'static [&'static str],
    kind: ErrorKind,
}

#[async_trait]
impl Transport for Refusing {
    fn name(&self) -> &'static str {
        self.scheme[0]
    }
    fn schemes(&self) -> &'static [&'static str] {
        self.scheme
    }
    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        Err(Error::new(
            self.kind,
            format!("{url} refused the connection"),
        ))
    }
}

fn install() {
    kombu_core::transport::memory::register();
    kombu_core::transport::register_transport(Arc::new(Refusing {
        scheme: &["down"],
        kind: ErrorKind::Connection,
    }));
    kombu_core::transport::register_transport(Arc::new(Refusing {
        scheme: &["denied"],
        kind: ErrorKind::AccessRefused,
    }));
}

#[tokio::test]
async fn an_unreachable_broker_moves_on_to_the_next_url() {
    install();
    let conn = Connection::open("down://u:secret@h1//;memory://failover-next")
        .await
        .unwrap();
    assert_eq!(conn.url().scheme(), "memory");
    assert_eq!(conn.url().host(), Some("failover-next"));
    assert_eq!(conn.alternates().len(), 2);
    assert!(!format!("{conn:?}").contains("secret"));
}

#[tokio::test]
async fn when_every_url_is_unreachable_the_error_is_recoverable_and_masked() {
    install();
    let err = Connection::open("down://u:secret@h1//;down://u:secret@h2//")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.is_recoverable());
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("h2"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

#[tokio::test]
async fn a_refusal_that_retrying_cannot_fix_stops_failover() {
    install();
    let err = Connection::open("denied://u:secret@h1//;memory://never-reached")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessRefused);
    assert!(!err.to_string().contains("secret"), "{err}");
}
