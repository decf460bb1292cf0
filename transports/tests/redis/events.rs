//! Events on Pub/Sub, in the capped stream and in the status hash; cancellation flags.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use citadel_transports::{EventData, EventMeta, JobId, JobSource, WireEvent};
use futures_util::StreamExt;
use serde_json::{json, Value};

use citadel_harness::redis::*;

use super::calls;

fn meta() -> EventMeta {
    EventMeta::new("node-id-1", "gpu-box")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_recorded_and_reflected_in_the_status() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let id = JobId::new("job-ev").unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe("stream:v1:job-ev").await.unwrap();
    let mut messages = sub.into_on_message();

    let events = [
        EventData::Claimed {
            agent_version: "0.1.0".into(),
        },
        EventData::Start {
            message: "starting".into(),
        },
        EventData::Chunk {
            content: "tok".into(),
            index: 0,
        },
        EventData::End {
            result: json!({"output": "done", "exit_code": 0}),
        },
    ];
    let mut sent = Vec::new();
    for (i, data) in events.into_iter().enumerate() {
        let ray = (i != 1).then(|| "ray-1".to_owned());
        let ev = WireEvent::new(id.clone(), meta(), data).with_ray_id(ray);
        src.publish(&ev).await.unwrap();
        sent.push(ev);
    }

    let mut received = Vec::new();
    for _ in 0..sent.len() {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("an event on pub/sub")
            .unwrap();
        let text: String = msg.get_payload().unwrap();
        received.push(text);
    }
    let expected_data = [
        json!({"agent_version": "0.1.0"}),
        json!({"message": "starting"}),
        json!({"content": "tok", "index": 0}),
        json!({"result": {"output": "done", "exit_code": 0}}),
    ];
    let types = ["claimed", "start", "chunk", "end"];
    for (i, text) in received.iter().enumerate() {
        let v: Value = serde_json::from_str(text).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o["version"], "1.0");
        assert_eq!(o["type"], types[i]);
        assert_eq!(o["jobId"], "job-ev");
        if i == 1 {
            assert!(!o.contains_key("rayId"), "rayId omitted when absent");
        } else {
            assert_eq!(o["rayId"], "ray-1");
        }
        let ts = o["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "{ts}");
        let ts = humantime::parse_rfc3339(ts).unwrap();
        assert!(SystemTime::now().duration_since(ts).unwrap() < Duration::from_secs(60));
        let mut data = expected_data[i].clone();
        data["meta"] = json!({"node_id": "node-id-1", "node_name": "gpu-box"});
        assert_eq!(o["data"], data);
        let keys: Vec<_> = o.keys().map(String::as_str).collect();
        let mut want = vec!["data", "jobId", "timestamp", "type", "version"];
        if i != 1 {
            want.push("rayId");
        }
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want, "no other top-level fields");
        assert_eq!(text, &sent[i].to_json());
    }

    let log = range(&mut c, "stream:v1:job-ev:events").await;
    assert_eq!(log.len(), 4);
    for (i, (_, f)) in log.iter().enumerate() {
        assert_eq!(field(f, "type"), Some(types[i]));
        assert_eq!(field(f, "event"), Some(received[i].as_str()));
    }
    let ttl: i64 = redis::cmd("PTTL")
        .arg("stream:v1:job-ev:events")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");

    let status: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("job:job-ev:status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["worker_id"], "node-a");
    assert!(humantime::parse_rfc3339(&status["updated_at"]).is_ok());
    assert!(!status.contains_key("error"));

    // A completed job's status is final (see completion.rs); another job shows failures and
    // cancellations, an error cleared by what follows it.
    let other = JobId::new("job-ev-2").unwrap();
    let failed = WireEvent::new(
        other.clone(),
        meta(),
        EventData::Error {
            error: "oom".into(),
            recoverable: true,
        },
    );
    src.publish(&failed).await.unwrap();
    let status: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("job:job-ev-2:status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"], "oom");
    let cancelled = WireEvent::new(
        other,
        meta(),
        EventData::Cancelled {
            reason: "user".into(),
        },
    );
    src.publish(&cancelled).await.unwrap();
    let status: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("job:job-ev-2:status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(status["status"], "cancelled");
    assert!(!status.contains_key("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_capped() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.events_maxlen = 10;
    let src = citadel_transports::RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let id = JobId::new("chatty").unwrap();
    for i in 0..500 {
        let ev = WireEvent::new(
            id.clone(),
            meta(),
            EventData::Chunk {
                content: "x".into(),
                index: i,
            },
        );
        src.publish(&ev).await.unwrap();
    }
    let len: usize = redis::cmd("XLEN")
        .arg("stream:v1:chatty:events")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(len < 500, "{len}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_is_the_existence_of_the_key() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let id = JobId::new("j-c").unwrap();
    assert!(!src.is_cancelled(&id).await.unwrap());
    let _: () = redis::cmd("SET")
        .arg("job:cancelled:j-c")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(src.is_cancelled(&id).await.unwrap());
}

/// Events go out through a script called by its SHA: a Redis that forgot its scripts (a
/// restart, `SCRIPT FLUSH`) gets it again and the event, the status and the completion record
/// are all written, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_redis_that_forgot_its_scripts() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let id = JobId::new("j-flushed").unwrap();
    let claimed = EventData::Claimed {
        agent_version: "0.1.0".into(),
    };
    src.publish(&WireEvent::new(id.clone(), meta(), claimed))
        .await
        .unwrap();
    // `claimed` is sent without waiting: let it land before the scripts are forgotten.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: u64 = redis::cmd("XLEN")
            .arg("stream:v1:j-flushed:events")
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`claimed` never landed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let end = WireEvent::new(id.clone(), meta(), EventData::End { result: json!(7) });
    src.publish(&end).await.unwrap();
    let types: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("stream:v1:j-flushed:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let types: Vec<&str> = types.iter().map(|(_, f)| f["type"].as_str()).collect();
    assert_eq!(types, ["claimed", "end"]);
    let status: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("job:j-flushed:status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(status["status"], "completed");
    let record: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("job:j-flushed:done")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(record["outcome"], "completed");
    assert_eq!(record["event"], end.to_json());
}

/// A job's `claimed` and `start` go out in one script call, in order: both published, both in
/// the event stream, the status `processing` and the stream's expiry set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_and_start_travel_in_one_call() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe("stream:v1:j-pair").await.unwrap();
    let mut messages = sub.into_on_message();
    let id = JobId::new("j-pair").unwrap();
    let events = [
        WireEvent::new(
            id.clone(),
            meta(),
            EventData::Claimed {
                agent_version: "0.1.0".into(),
            },
        ),
        WireEvent::new(
            id.clone(),
            meta(),
            EventData::Start {
                message: "running".into(),
            },
        ),
    ];
    // An event of another job first, so that the script is loaded.
    let other = WireEvent::new(
        JobId::new("j-other").unwrap(),
        meta(),
        EventData::Cancelled {
            reason: "test".into(),
        },
    );
    src.publish(&other).await.unwrap();
    let scripts = calls(&mut c, "evalsha").await;
    src.publish_all(&events).await.unwrap();
    for want in &events {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("an event on pub/sub")
            .unwrap();
        let text: String = msg.get_payload().unwrap();
        assert_eq!(text, want.to_json());
    }
    assert_eq!(
        calls(&mut c, "evalsha").await,
        scripts + 1,
        "one script call"
    );
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("stream:v1:j-pair:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let types: Vec<&str> = entries.iter().map(|(_, f)| f["type"].as_str()).collect();
    assert_eq!(types, ["claimed", "start"]);
    let status: String = redis::cmd("HGET")
        .arg("job:j-pair:status")
        .arg("status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(status, "processing");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("stream:v1:j-pair:events")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0, "the claim set the stream's expiry: {ttl}");
}
