# Written by `cgcloud local up`: moto's server, with one change to match EC2: a terminated
# instance disappears from DescribeInstances some time after it terminated (EC2: about an
# hour). moto keeps them forever, and every DescribeInstances walks all of them, so its answers
# slow down as a long-lived local cloud accumulates history.
# Usage: python moto_server_aging.py TTL_SECONDS [moto_server arguments...]
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


threading.Thread(target=age_out_terminated, name="cgcloud-aging", daemon=True).start()
sys.exit(main())
