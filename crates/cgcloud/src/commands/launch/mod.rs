//! The launch engine: what `create`, `recreate`, `create-cluster`, `grow-cluster` and
//! `register-agents` share. A launch is prepared (everything checked, nothing created), launched
//! in groups of one RunInstances call each (on demand or on the spot market, `capacity`), and
//! run as a transaction: if anything fails or the user presses Ctrl-C, everything this launch
//! created is removed, unless --never-terminate. One file per concern: `prepare`, `security`
//! (groups and IAM), `group` (tags, user data, RunInstances), `capacity`, `volumes`, `agent`
//! (the agent's steps), `hostkeys` (SSH and host keys), `txn` (transaction and rollback).

use crate::cli::{LaunchArgs, SpotArgs};
use crate::commands::boxes::wait_for_state;
use crate::context::Ctx;
use anyhow::{anyhow, bail, Context as _, Result};
use cgcloud_aws::ec2::{FoundImage, InstanceTypeInfo, LaunchSpec, Network, SgRule, SgSource};
use cgcloud_aws::Cloud;
use cgcloud_core::glob::is_glob;
use cgcloud_core::keypairs;
use cgcloud_core::model::{BoxInfo, ImageInfo};
use cgcloud_core::plan::{Action, On, Step};
use cgcloud_core::policy::Policy;
use cgcloud_core::tags::{self, Tags};
use cgcloud_core::userdata::cloud_config;
use cgcloud_core::Namespace;
use cgcloud_roles::os::{Arch, ImageSource, OsDef};
use cgcloud_roles::role::{Proto, Role};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod agent;
mod capacity;
mod group;
mod hostkeys;
mod prepare;
mod security;
mod txn;
mod volumes;

pub(crate) use agent::*;
pub(crate) use capacity::*;
pub(crate) use group::*;
pub(crate) use hostkeys::*;
pub(crate) use prepare::*;
pub(crate) use security::*;
pub(crate) use txn::*;
pub(crate) use volumes::*;
