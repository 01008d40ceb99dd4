from cloud.cli import main

main()
