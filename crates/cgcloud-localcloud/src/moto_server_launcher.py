# Written by `cgcloud local up` (and used by the tests): moto's server with three changes. The
# first two keep its answer times flat as the cloud grows, as EC2's do:
# 1. A terminated instance disappears from DescribeInstances some time after it terminated
#    (EC2: about an hour; TTL_SECONDS, 0 = never). moto keeps them forever, and every
#    DescribeInstances walks all of them.
# 2. A resource's tags are looked up by its id. moto finds them by matching a resource-id
#    pattern against every tag of every resource, so a DescribeInstances of N tagged instances
#    cost O(N x all tags): about 100 ms at 100 instances, minutes at 1000.
# 3. RunInstances gives the instance profile to every instance it launches, as EC2 does. moto
#    associates it with the first one only, so a cluster's workers (launched together) would
#    have no instance-profile credentials in the local cloud's IMDS.
# 4. An instance stopped or terminated as a spot interruption says so in its state reason, as
#    on EC2 (`Server.SpotInstanceTermination`): the local cloud's controller marks its
#    TerminateInstances or StopInstances with the header X-Cgcloud-Spot-Interruption (only the
#    controller and this machine's users reach moto; the guests' door refuses the header).
# 5. RunInstances from a launch template uses all of the template, as EC2 does: moto 5.2.5
#    takes its image, groups, key, user data, instance tags and block devices, but not its
#    IamInstanceProfile (an elastic cluster's workers would have no credentials) nor its
#    volume tags (the workers' volumes would belong to no namespace), and it adds its default
#    8 GiB root volume before the template's own, so a template's root volume left an untagged
#    volume behind that nothing deletes. A template's instance-store mapping (EC2 ignores it
#    on types without instance stores) and a template id that does not exist failed the launch
#    with an internal error, which clients retry; the id is now EC2's
#    InvalidLaunchTemplateId.NotFound.
# 6. DeleteLaunchTemplate deletes the template's tags, as EC2 does. moto 5.2.5 keeps them, and
#    DescribeTags (which finds namespaces) would list a deleted template forever.
# Usage: python moto_server_launcher.py TTL_SECONDS [moto_server arguments...]
import sys
import threading
import time

TTL = float(sys.argv.pop(1))

from moto.server import main  # noqa: E402


def age_out_terminated():
    from moto.ec2.models import ec2_backends

    first_seen = {}
    while True:
        time.sleep(min(60.0, max(2.0, TTL / 4)))
        now = time.time()
        try:
            for account in list(ec2_backends.keys()):
                for region, backend in list(ec2_backends[account].items()):
                    for rid, reservation in list(backend.reservations.items()):
                        keep = []
                        for inst in list(reservation.instances):
                            if inst._state.name == "terminated":
                                since = first_seen.setdefault(inst.id, now)
                                if now - since >= TTL:
                                    first_seen.pop(inst.id, None)
                                    backend.tags.pop(inst.id, None)
                                    continue
                            keep.append(inst)
                        if len(keep) == len(reservation.instances):
                            continue
                        if keep:
                            reservation.instances = keep
                        else:
                            backend.reservations.pop(rid, None)
        except Exception as e:  # moto's internals changed: keep serving, say why once a round
            print(f"cgcloud: could not age out terminated instances: {e!r}", file=sys.stderr, flush=True)


def index_tags():
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self):
        rid = getattr(self, "id", None)
        if not rid:
            return []
        # .get, not [], so that looking never creates an entry in moto's defaultdict.
        tags = self.ec2_backend.tags.get(rid) or {}
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(rid), "")
        # The same records, in the same order, as moto's describe_tags(resource-id=[rid]).
        return [{"resource_id": rid, "key": k, "value": v, "resource_type": kind} for k, v in tags.items()]

    TaggedEC2Resource.get_tags = get_tags


def profile_for_every_instance():
    from moto.ec2.responses.instances import InstanceResponse

    original = InstanceResponse.run_instances

    def run_instances(self):
        result = original(self)
        name = self._get_param("IamInstanceProfile.Name")
        arn = self._get_param("IamInstanceProfile.Arn")
        reservation = getattr(result, "result", None)
        for inst in list(getattr(reservation, "instances", []))[1:]:
            if name:
                self.ec2_backend.associate_iam_instance_profile(instance_id=inst.id, iam_instance_profile_name=name)
            if arn:
                self.ec2_backend.associate_iam_instance_profile(instance_id=inst.id, iam_instance_profile_arn=arn)
        return result

    InstanceResponse.run_instances = run_instances


def launch_templates_in_full():
    from moto.ec2.exceptions import InvalidLaunchTemplateIdNotFound
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.models.launch_templates import LaunchTemplateBackend
    from moto.ec2.utils import convert_tag_spec

    run = InstanceBackend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        if not kwargs.get("launch_template"):
            return run(self, image_id, count, user_data, security_group_names, **kwargs)
        tid = kwargs["launch_template"].get("LaunchTemplateId")
        if tid and tid not in self.launch_templates:
            raise InvalidLaunchTemplateIdNotFound(tid)
        data = self._get_template_from_args(kwargs["launch_template"]).data
        # The request's own tags, block devices and profile override the template's.
        tags = kwargs.get("tags") or {}
        template_tags = convert_tag_spec(data.get("TagSpecifications") or [])
        tags["volume"] = {**template_tags.get("volume", {}), **tags.get("volume", {})}
        kwargs["tags"] = tags
        # moto makes volumes of EBS mappings only (an instance-store one would fail its launch).
        ebs = [m for m in data.get("BlockDeviceMappings") or [] if "Ebs" in m]
        if ebs and "block_device_mappings" not in kwargs:
            kwargs["block_device_mappings"] = ebs
        reservation = run(self, image_id, count, user_data, security_group_names, **kwargs)
        profile = data.get("IamInstanceProfile") or {}
        own = kwargs.get("iam_instance_profile_name") or kwargs.get("iam_instance_profile_arn")
        if not own and (profile.get("Arn") or profile.get("Name")):
            for inst in reservation.instances:
                if profile.get("Arn"):
                    self.associate_iam_instance_profile(instance_id=inst.id, iam_instance_profile_arn=profile["Arn"])
                else:
                    self.associate_iam_instance_profile(instance_id=inst.id, iam_instance_profile_name=profile["Name"])
        return reservation

    InstanceBackend.run_instances = run_instances

    delete = LaunchTemplateBackend.delete_launch_template

    def delete_launch_template(self, name, tid):
        template = delete(self, name, tid)
        self.tags.pop(template.id, None)
        return template

    LaunchTemplateBackend.delete_launch_template = delete_launch_template


def spot_interruption_reasons():
    from moto.ec2.models.instances import StateReason
    from moto.ec2.responses.instances import InstanceResponse

    reasons = {
        "terminate_instances": ("Server.SpotInstanceTermination", "Spot instance termination"),
        "stop_instances": ("Server.SpotInstanceShutdown", "Spot instance shutdown"),
    }
    for method, (code, text) in reasons.items():
        original = getattr(InstanceResponse, method)

        def marked(self, original=original, code=code, text=text):
            result = original(self)
            if self.headers.get("X-Cgcloud-Spot-Interruption"):
                for instance_id in self._get_param("InstanceIds", []):
                    self.ec2_backend.get_instance(instance_id).state_reason = StateReason(f"{code}: {text}", code)
            return result

        setattr(InstanceResponse, method, marked)


index_tags()
profile_for_every_instance()
spot_interruption_reasons()
launch_templates_in_full()
if TTL > 0:
    threading.Thread(target=age_out_terminated, name="cgcloud-aging", daemon=True).start()
sys.exit(main())
