//! `pay` and `cancel`: what a checkout does, as a plain NATS client publishing MessagePack to the
//! ingress subjects. The JetStream ack (stream and sequence) is the receipt.

use async_nats::jetstream::{self, message::PublishMessage};
use paystream_common::codec::{self, CONTENT_TYPE_MSGPACK};
use paystream_common::ingress::{CancelRequest, PaymentRequest};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Receipt {
    pub payment_id: String,
    pub stream: String,
    pub seq: u64,
    /// The stream had already seen this Nats-Msg-Id: nothing new was stored.
    pub duplicate: bool,
}

impl Receipt {
    pub fn table(&self) -> String {
        format!(
            "payment {} accepted: {} seq {}{}\n",
            self.payment_id,
            self.stream,
            self.seq,
            if self.duplicate { " (duplicate)" } else { "" }
        )
    }
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: String,
    payload: Vec<u8>,
    payment_id: String,
) -> anyhow::Result<Receipt> {
    let msg = PublishMessage::build()
        .payload(payload.into())
        .message_id(msg_id)
        .header("Content-Type", CONTENT_TYPE_MSGPACK);
    let ack = js.send_publish(subject, msg).await?.await?;
    Ok(Receipt {
        payment_id,
        stream: ack.stream,
        seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

pub async fn pay(js: &jetstream::Context, req: &PaymentRequest) -> anyhow::Result<Receipt> {
    publish(
        js,
        format!("payments.request.{}", req.buyer_id),
        req.payment_id.to_string(),
        codec::to_msgpack(req),
        req.payment_id.to_string(),
    )
    .await
}

pub async fn cancel(js: &jetstream::Context, req: &CancelRequest) -> anyhow::Result<Receipt> {
    publish(
        js,
        format!("payments.cancel.{}", req.buyer_id),
        format!("cancel-{}", req.payment_id),
        codec::to_msgpack(req),
        req.payment_id.to_string(),
    )
    .await
}
