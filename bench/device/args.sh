# Sourced by the device scripts (run.sh, throughput.sh): their shared command line.
# device_args NAME HELP_LINES ARGS...: sets DRY (--dry-run), BUDGET (--budget SECONDS) and PACK
# (--pack DIR) over the caller's defaults; --help prints the caller's HELP_LINES (a sed range).
device_args() {
  local name=$1 help=$2
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) DRY=1 ;;
      --budget) BUDGET=$2; shift ;;
      --pack) PACK=$2; shift ;;
      -h|--help) sed -n "$help" "$0"; exit 0 ;;
      *) echo "$name: unknown argument '$1' (use --dry-run, --budget SECONDS, --pack DIR)" >&2; exit 2 ;;
    esac
    shift
  done
}
