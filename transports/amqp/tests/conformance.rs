//! The conformance suite on RabbitMQ (127.0.0.1:5672 unless `KOMBU_TEST_AMQP_URL`), on a virtual
//! host made fresh for the run; every scenario names its entities with its own id.

mod common;

use std::sync::OnceLock;

use async_trait::async_trait;
use kombu_core::conformance::Harness;

struct Amqp;

fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        kombu_amqp::register();
        if !common::broker_up("conformance") {
            return None;
        }
        let vhost = common::fresh_vhost("kombu-rs-conformance");
        Some(common::url_on(vhost.as_deref()))
    })
    .clone()
}

#[async_trait]
impl Harness for Amqp {
    fn transport(&self) -> &'static str {
        kombu_amqp::register();
        "amqp"
    }
    async fn fresh_url(&self) -> Option<String> {
        tokio::task::spawn_blocking(url).await.ok().flatten()
    }
}

kombu_core::conformance_tests!(Amqp);
