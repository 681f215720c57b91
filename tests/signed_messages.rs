//! A consumer that requires signatures, end to end on the memory transport: signed messages
//! arrive; unsigned and tampered ones come out on the error path with their delivery, so the
//! application rejects them (nothing is decoded from them, nothing is lost silently).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kombu::serializers::{HmacSerializer, Registry};
use kombu::{Connection, Queue, StreamExt};

#[tokio::test]
async fn consumer_requiring_hmac_refuses_unsigned_and_tampered_messages() -> kombu::Result<()> {
    let mut registry = Registry::default();
    registry.register_serializer(HmacSerializer::new("team-a", [3u8; 32])?);
    let conn = Connection::open_with("memory://signed-hmac", registry).await?;
    let queue = Queue::new("signed");
    conn.maybe_declare_queue(&queue).await?;
    let producer = conn.producer().routing_key("signed");

    // 1. signed, 2. unsigned json, 3. signed then tampered, 4. signed.
    producer.message("first").serializer("hmac").send().await?;
    producer
        .message("unsigned")
        .serializer("json")
        .send()
        .await?;
    let good = conn.registry().encode("evil", "hmac")?;
    let mut raw = STANDARD.decode(&good.body).expect("base64");
    let last = raw.len() - 2;
    raw[last] = b'X';
    producer
        .publish_bytes(
            STANDARD.encode(raw).into_bytes(),
            &good.content_type,
            &good.content_encoding,
        )
        .await?;
    producer.message("second").serializer("hmac").send().await?;

    let mut consumer = conn.consumer([queue]).accept(["hmac"]).build().await?;
    let mut decoded = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..4 {
        match consumer.next().await.expect("four messages") {
            Ok(delivery) => match delivery.decode::<String>() {
                Ok(value) => {
                    decoded.push(value);
                    delivery.ack().await.map_err(|e| e.error)?;
                }
                Err(err) => {
                    refused.push(format!("{err:#}"));
                    delivery.reject().await.map_err(|e| e.error)?;
                }
            },
            Err(err) => {
                refused.push(format!("{:#}", err.error));
                let delivery = err
                    .delivery
                    .expect("a refused message comes with its delivery");
                delivery.reject().await.map_err(|e| e.error)?;
            }
        }
    }
    assert_eq!(decoded, ["first", "second"]);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0].contains("Refusing to deserialize untrusted content of type application/json"),
        "{}",
        refused[0]
    );
    assert!(refused[1].contains("bad signature"), "{}", refused[1]);
    assert_eq!(conn.channel().await?.queue_size("signed").await?, 0);
    Ok(())
}

#[cfg(feature = "auth")]
#[tokio::test]
async fn consumer_requiring_celery_auth_refuses_unsigned_messages() -> kombu::Result<()> {
    use kombu::serializers::auth::{
        AuthSerializer, CertStore, Certificate, PrivateKey, self_signed_for_tests,
    };

    let (key, cert) = self_signed_for_tests("producer", 9)?;
    let cert = Certificate::from_pem(&cert)?;
    let mut store = CertStore::new();
    store.add(cert.clone())?;
    let mut registry = Registry::default();
    registry.register_serializer(
        AuthSerializer::new(store).with_signer(PrivateKey::from_pem(&key, None)?, cert)?,
    );
    let conn = Connection::open_with("memory://signed-auth", registry).await?;
    let queue = Queue::new("tasks");
    conn.maybe_declare_queue(&queue).await?;
    let producer = conn.producer().routing_key("tasks");

    producer.message("signed").serializer("auth").send().await?;
    producer
        .publish_bytes(&b"raw, unsigned"[..], "application/data", "binary")
        .await?;
    producer
        .publish_bytes(&b"text"[..], "application/text", "utf-8")
        .await?;
    producer.message("json").serializer("json").send().await?;

    let mut consumer = conn.consumer([queue]).accept(["auth"]).build().await?;
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        match consumer.next().await.expect("four messages") {
            Ok(delivery) => match delivery.decode::<String>() {
                Ok(value) => {
                    outcomes.push(format!("ok {value}"));
                    delivery.ack().await.map_err(|e| e.error)?;
                }
                Err(err) => {
                    outcomes.push(format!("refused {err:#}"));
                    delivery.reject().await.map_err(|e| e.error)?;
                }
            },
            Err(err) => {
                outcomes.push(format!("refused {:#}", err.error));
                err.delivery
                    .expect("delivery")
                    .reject()
                    .await
                    .map_err(|e| e.error)?;
            }
        }
    }
    assert_eq!(outcomes[0], "ok signed");
    assert!(
        outcomes[1].contains("auth refused the message"),
        "{}",
        outcomes[1]
    );
    assert!(
        outcomes[2].contains("Refusing to deserialize untrusted content of type application/text"),
        "{}",
        outcomes[2]
    );
    assert!(
        outcomes[3].contains("of type application/json"),
        "{}",
        outcomes[3]
    );
    Ok(())
}
