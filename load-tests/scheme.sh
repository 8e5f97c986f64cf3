# Sourced, never run: sets NEXUS, the scheme of Nexus targets: `nexus+tcp` (the native
# transport, the default) or `nexus` (gRPC) when NEXUS_TRANSPORT=grpc.

case "${NEXUS_TRANSPORT:-native}" in
  native) NEXUS=nexus+tcp ;;
  grpc) NEXUS=nexus ;;
  *) echo "NEXUS_TRANSPORT=$NEXUS_TRANSPORT: use native or grpc" >&2; exit 2 ;;
esac
