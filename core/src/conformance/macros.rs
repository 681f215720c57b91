//! [`conformance_tests!`](crate::conformance_tests): one test per scenario.

/// Lists every scenario as a `#[tokio::test]` for the given harness expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            round_trip,
            direct_routing,
            topic_routing,
            fanout_routing,
            headers_routing,
            default_exchange,
            unroutable,
            binding_from_elsewhere,
            ack_removes,
            reject_drops,
            requeue_redelivers,
            requeue_keeps_place,
            unacked_return_on_drop,
            unacked_return_on_close,
            visibility_timeout,
            prefetch_bound,
            priorities,
            message_ttl,
            dead_lettering,
            max_length,
            purge_and_size,
            stats_and_peek,
            queue_delete,
            competing_consumers,
            concurrent_producers,
            binary_bodies,
            unicode,
            accept_list,
            poison_dead_lettered,
            poison_to_dead_letter_exchange,
            poison_requeue_limit,
            poison_stop_leaves_it,
            poison_dead_letter_exchange_fallbacks,
            compression,
            batch_fifo,
            basic_get,
            no_ack,
            bind_unbind,
            multi_queue_consumer,
            declare_idempotent,
            declare_conflict_says_what_differs,
            headers_and_properties,
            channel_close_ends_stream,
            missing_queue,
            missing_exchange,
            default_exchange_mandatory_batch,
            dropped_delivery_requeued,
            polling_after_end,
            lease_end_frees_prefetch_slot,
            lease_restored_by_restorers_timeout,
            extended_lease_restarts,
            heartbeat_keeps_slow_handler,
            extension_keeps_prefetch_slot,
            delayed_delivery,
            delayed_eta,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::conformance::run(&$harness, stringify!($name), $crate::conformance::$name).await;
            }
        )*
    };
}
