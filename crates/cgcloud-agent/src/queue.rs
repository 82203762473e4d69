//! The notification queue that wakes the key sync at once: this box's own SQS queue, made on
//! first use and subscribed to the namespace's SNS topic (the workstation publishes there when
//! key pairs change). The queue is tagged with the box's ARN, which the box's IAM policy
//! requires: only that box may use it.

use crate::aws::{AwsError, Client, Service};
use crate::log::log;

pub struct Queue {
    namespace: String,
    instance_id: String,
    topic: String,
    /// Known once the queue exists and is subscribed; forgotten after an error ([`Queue::reset`]).
    url: Option<String>,
}

impl Queue {
    pub fn new(namespace: &str, instance_id: &str, topic: &str) -> Queue {
        Queue {
            namespace: namespace.to_owned(),
            instance_id: instance_id.to_owned(),
            topic: topic.to_owned(),
            url: None,
        }
    }

    /// Makes sure of the queue and its subscription again before the next wait: after an
    /// error the queue may be gone (deleted by `cleanup`) or the topic recreated.
    pub fn reset(&mut self) {
        self.url = None;
    }

    /// Waits up to `wait` seconds (at most 20, SQS's long poll) for notifications; true if any
    /// arrived. They are deleted: one is as good as many.
    pub fn wait(&mut self, aws: &Client, wait: u64) -> Result<bool, AwsError> {
        let url = self.ensure(aws)?;
        let a = aws.call(
            Service::Sqs,
            "ReceiveMessage",
            &[
                ("QueueUrl", url.clone()),
                ("WaitTimeSeconds", wait.min(20).to_string()),
                ("MaxNumberOfMessages", "10".into()),
                ("VisibilityTimeout", "10".into()),
            ],
        )?;
        let handles = a.texts("ReceiptHandle");
        for h in &handles {
            aws.call(Service::Sqs, "DeleteMessage", &[("QueueUrl", url.clone()), ("ReceiptHandle", h.clone())])?;
        }
        Ok(!handles.is_empty())
    }

    /// Makes sure this box's queue exists and receives the notification topic.
    fn ensure(&mut self, aws: &Client) -> Result<String, AwsError> {
        if let Some(u) = &self.url {
            return Ok(u.clone());
        }
        let ns = cgcloud_core::Namespace::parse(&self.namespace)
            .map_err(|e| AwsError::Parse { action: "namespace".into(), detail: e.to_string() })?;
        let name = ns.agent_queue_name(&self.instance_id);
        // The queue carries its box's ARN: the box's IAM policy lets only that box use it.
        let me = crate::cluster::describe_self(aws, &self.instance_id)?;
        // `terminate` deletes a box's queue once EC2 says it is terminated; its agent, still
        // running out its shutdown, then finds the queue gone and would make it again, for ever
        // orphaned (its credentials outlive the instance). A box that is going makes none.
        if !matches!(me.state.as_str(), "pending" | "running") {
            return Err(AwsError::Parse {
                action: "CreateQueue".into(),
                detail: format!("{} is {}: no notification queue for a box that is going", self.instance_id, me.state),
            });
        }
        let topic = aws
            .call(Service::Sns, "CreateTopic", &[("Name", self.topic.clone())])?
            .text("TopicArn")
            .unwrap_or_default();
        let url = aws
            .call(
                Service::Sqs,
                "CreateQueue",
                &[
                    ("QueueName", name),
                    ("Attribute.1.Name", "MessageRetentionPeriod".into()),
                    ("Attribute.1.Value", "300".into()),
                    ("Tag.1.Key", cgcloud_core::tags::QUEUE_OWNER.into()),
                    ("Tag.1.Value", me.arn(&aws.region)),
                ],
            )?
            .text("QueueUrl")
            .unwrap_or_default();
        let arn = aws
            .call(
                Service::Sqs,
                "GetQueueAttributes",
                &[("QueueUrl", url.clone()), ("AttributeName.1", "QueueArn".into())],
            )?
            .text("Value")
            .unwrap_or_default();
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                           "Resource": arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]
        });
        aws.call(
            Service::Sqs,
            "SetQueueAttributes",
            &[
                ("QueueUrl", url.clone()),
                ("Attribute.1.Name", "Policy".into()),
                ("Attribute.1.Value", policy.to_string()),
            ],
        )?;
        aws.call(
            Service::Sns,
            "Subscribe",
            &[
                ("TopicArn", topic),
                ("Protocol", "sqs".into()),
                ("Endpoint", arn),
                ("Attributes.entry.1.key", "RawMessageDelivery".into()),
                ("Attributes.entry.1.value", "true".into()),
            ],
        )?;
        log("info", format!("listening on queue {url}"));
        self.url = Some(url.clone());
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::TestEnv;

    #[test]
    fn a_box_that_is_going_makes_no_queue() {
        let env = TestEnv::new("/nonexistent");
        let ids = env.boto3(
            "ec2 = client('ec2')\n\
             ami = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']\n\
             r = ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2)\n\
             ids = [i['InstanceId'] for i in r['Instances']]\n\
             ec2.terminate_instances(InstanceIds=ids[1:])\n\
             print(' '.join(ids))",
        );
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let creds = cgcloud_core::sigv4::Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        };
        let aws = Client::new(&env.region, Some(env.moto_endpoint.clone()), Some(creds));
        let queues = || env.boto3("print(len(client('sqs').list_queues().get('QueueUrls', [])))");
        let mut going = Queue::new("/q/", ids[1], "q_cgcloud-agent");
        let err = going.ensure(&aws).unwrap_err().to_string();
        assert!(err.contains("terminated") || err.contains("shutting-down"), "{err}");
        assert_eq!(queues().trim(), "0", "a terminated box made a queue");
        let mut live = Queue::new("/q/", ids[0], "q_cgcloud-agent");
        assert!(live.ensure(&aws).unwrap().contains(&format!("cgcloud-agent_{}", ids[0])));
        assert_eq!(queues().trim(), "1");
    }
}
