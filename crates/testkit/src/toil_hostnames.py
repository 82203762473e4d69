# A Toil workflow for tests and benchmarks: --jobs children that each sleep --seconds and
# return their host's name (so the names travel through the job store), then a follow-on that
# writes them to --out, one per line.
import socket, time
from toil.common import Toil
from toil.job import Job

def record(job, seconds):
    time.sleep(seconds)
    return socket.gethostname()

def collect(job, names, out):
    with open(out, "w") as f:
        f.write("\n".join(names) + "\n")

def root(job, jobs, seconds, out):
    small = dict(cores=1, memory="64Mi", disk="16Mi")
    names = [job.addChildJobFn(record, seconds, **small).rv() for _ in range(jobs)]
    job.addFollowOnJobFn(collect, names, out, **small)

if __name__ == "__main__":
    parser = Job.Runner.getDefaultArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1)
    parser.add_argument("--out", required=True)
    options = parser.parse_args()
    with Toil(options) as toil:
        toil.start(Job.wrapJobFn(root, options.jobs, options.seconds, options.out, cores=1, memory="64Mi", disk="16Mi"))
