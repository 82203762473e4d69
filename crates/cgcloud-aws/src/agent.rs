//! The AWS side of the agent's world, as the workstation sees it: notifying agents that keys
//! changed (SNS), agent queues (SQS) and the metrics agents report (CloudWatch).

use crate::{AwsError, Cloud};
use aws_sdk_cloudwatch::types::{Dimension, DimensionFilter, Statistic};

/// A metric's latest datapoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricValue {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub timestamp: String,
}

impl Cloud {
    async fn agent_topic_arn(&self) -> Result<String, AwsError> {
        let topic = self
            .sns
            .create_topic()
            .name(cgcloud_core::AGENT_TOPIC)
            .send()
            .await
            .map_err(|e| self.classify("sns:CreateTopic", e))?;
        Ok(topic.topic_arn().unwrap_or_default().to_owned())
    }

    /// Tells every agent in the region to refresh its keys now.
    pub async fn notify_keys_changed(&self) -> Result<(), AwsError> {
        let topic = self.agent_topic_arn().await?;
        let publish = || async {
            self.sns
                .publish()
                .topic_arn(&topic)
                .message(r#"{"version":1,"type":"keys-changed"}"#)
                .send()
                .await
                .map_err(|e| self.classify("sns:Publish", e))
        };
        match publish().await {
            Ok(_) => Ok(()),
            // EC2 drops messages for deleted queues; emulators refuse the whole publish. Boxes
            // terminated outside cgcloud leave such subscriptions behind.
            Err(e) if e.code().is_some_and(|c| c.contains("NonExistentQueue")) => {
                let pruned = self.prune_agent_subscriptions().await?;
                tracing::debug!("removed {pruned} subscription(s) of deleted agent queues");
                publish().await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Unsubscribes the agent topic's subscriptions whose queue no longer exists; returns how
    /// many.
    pub async fn prune_agent_subscriptions(&self) -> Result<usize, AwsError> {
        let topic = self.agent_topic_arn().await?;
        let subs: Vec<_> = self
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(&topic)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("sns:ListSubscriptionsByTopic", e))?;
        let mut pruned = 0;
        for sub in subs {
            let (Some(sub_arn), Some(endpoint)) = (sub.subscription_arn(), sub.endpoint()) else { continue };
            if sub.protocol() != Some("sqs") {
                continue;
            }
            let Some(queue) = endpoint.rsplit(':').next() else { continue };
            if self.queue_url(queue).await?.is_some() {
                continue;
            }
            self.sns
                .unsubscribe()
                .subscription_arn(sub_arn)
                .send()
                .await
                .map_err(|e| self.classify("sns:Unsubscribe", e))?;
            pruned += 1;
        }
        Ok(pruned)
    }

    /// The URL of the queue called `name`; None if there is no such queue.
    async fn queue_url(&self, name: &str) -> Result<Option<String>, AwsError> {
        match self.sqs.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(Some(out.queue_url().unwrap_or_default().to_owned())),
            Err(e) => {
                let e = self.classify("sqs:GetQueueUrl", e);
                if e.code().is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist")) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The tags of the queue called `name`, or None if there is no such queue.
    pub async fn queue_tags(&self, name: &str) -> Result<Option<cgcloud_core::tags::Tags>, AwsError> {
        let Some(url) = self.queue_url(name).await? else { return Ok(None) };
        let out = self
            .sqs
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| self.classify("sqs:ListQueueTags", e))?;
        Ok(Some(out.tags().map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()))
    }

    /// Agent queues whose name starts with `prefix`: (name, url).
    pub async fn agent_queues(&self, prefix: &str) -> Result<Vec<(String, String)>, AwsError> {
        let urls: Vec<String> = self
            .sqs
            .list_queues()
            .queue_name_prefix(prefix)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("sqs:ListQueues", e))?;
        Ok(urls
            .into_iter()
            .filter_map(|u| {
                let name = u.rsplit('/').next()?.to_owned();
                name.starts_with(prefix).then_some((name, u))
            })
            .collect())
    }

    pub async fn delete_queue(&self, url: &str) -> Result<(), AwsError> {
        self.sqs.delete_queue().queue_url(url).send().await.map_err(|e| self.classify("sqs:DeleteQueue", e))?;
        Ok(())
    }

    /// Deletes the queue called `name`, if it exists.
    pub async fn delete_queue_named(&self, name: &str) -> Result<bool, AwsError> {
        match self.queue_url(name).await? {
            Some(url) => {
                self.delete_queue(&url).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The latest value of every CGCloud metric of an instance over the last `minutes`.
    pub async fn instance_metrics(&self, instance_id: &str, minutes: i64) -> Result<Vec<MetricValue>, AwsError> {
        let listed = self
            .cloudwatch
            .list_metrics()
            .namespace("CGCloud")
            .dimensions(DimensionFilter::builder().name("InstanceId").value(instance_id).build())
            .send()
            .await
            .map_err(|e| self.classify("cloudwatch:ListMetrics", e))?;
        let now = std::time::SystemTime::now();
        let start = now - std::time::Duration::from_secs(minutes.max(1) as u64 * 60);
        let mut out = Vec::new();
        for m in listed.metrics() {
            let Some(name) = m.metric_name() else { continue };
            let stats = self
                .cloudwatch
                .get_metric_statistics()
                .namespace("CGCloud")
                .metric_name(name)
                .dimensions(Dimension::builder().name("InstanceId").value(instance_id).build())
                .start_time(aws_smithy_types::DateTime::from(start))
                .end_time(aws_smithy_types::DateTime::from(now + std::time::Duration::from_secs(60)))
                .period(60)
                .statistics(Statistic::Average)
                .send()
                .await
                .map_err(|e| self.classify("cloudwatch:GetMetricStatistics", e))?;
            if let Some(dp) = stats.datapoints().iter().max_by_key(|d| d.timestamp().map(|t| t.secs()).unwrap_or(0)) {
                out.push(MetricValue {
                    name: name.to_owned(),
                    value: dp.average().unwrap_or(f64::NAN),
                    unit: dp.unit().map(|u| u.as_str().to_owned()).unwrap_or_default(),
                    timestamp: dp
                        .timestamp()
                        .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
                        .unwrap_or_default(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
