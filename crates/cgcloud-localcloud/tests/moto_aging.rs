//! The local cloud's moto launcher ages out terminated instances as EC2 does (here after 2 s
//! instead of an hour): they leave DescribeInstances, running ones stay. Needs
//! `CGCLOUD_MOTO_SERVER` (the moto of the API tests); talks to 127.0.0.1 only.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn terminated_instances_age_out_and_running_ones_stay() {
    let server = std::env::var("CGCLOUD_MOTO_SERVER").expect("CGCLOUD_MOTO_SERVER");
    let python = std::path::Path::new(&server).with_file_name("python");
    let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/moto_server_launcher.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _moto = Server(
        Command::new(&python)
            .arg(&launcher)
            .args(["2", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let boto3 = |body: &str| {
        let script = format!(
            "import boto3, time\nec2 = boto3.client('ec2', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1', aws_access_key_id='t', aws_secret_access_key='t')\n{body}\n"
        );
        let out =
            Command::new(&python).args(["-c", &script]).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "moto did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids = boto3(
        "ami = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']\n\
         r = ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2)\n\
         ids = [i['InstanceId'] for i in r['Instances']]\n\
         ec2.terminate_instances(InstanceIds=[ids[0]])\n\
         print(' '.join(ids))",
    );
    let ids: Vec<&str> = ids.split(' ').collect();
    let listed = || {
        boto3("print(' '.join(sorted(i['InstanceId'] for r in ec2.describe_instances()['Reservations'] for i in r['Instances'])))")
    };
    assert!(listed().contains(ids[0]), "a terminated instance is listed at first, as on EC2");
    let started = Instant::now();
    while listed().contains(ids[0]) {
        assert!(started.elapsed() < Duration::from_secs(30), "the terminated instance is still listed");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(listed(), ids[1], "the running instance must stay");
}
